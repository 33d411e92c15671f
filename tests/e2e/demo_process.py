"""Run `lepton demo` as a subprocess for the end-to-end tests, and check it left nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.mosquitto import free_port

LEPTON = [
    sys.executable,
    "-c",
    "import sys; from lepton_edge.controller.cli import main; sys.exit(main())",
]


@dataclass
class DemoProcess:
    workdir: Path
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    descendants: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def tmpdir(self) -> Path:
        return self.workdir / "tmp"

    @property
    def log(self) -> Path:
        return self.workdir / "demo.log"

    @property
    def summary(self) -> Path:
        return self.workdir / "summary.json"

    def start(self, *args: str) -> DemoProcess:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(self.tmpdir), "COLUMNS": "160"}
        argv = [*LEPTON, "demo", "--http-port", str(self.http_port), "--live", "off", *args]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def remember_descendants(self) -> None:
        """Note every process the demo started (agents, broker) to check they are gone later."""
        assert self.proc is not None
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.descendants.add(child.pid)
        except psutil.NoSuchProcess:
            pass

    def wait_for_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                self.remember_descendants()
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"demo exited ({self.proc.returncode}):\n{self.output()[-3000:]}"
                )
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} after {timeout} s:\n{self.output()[-3000:]}")

    def wait_for_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"demo exited ({self.proc.returncode}):\n{self.output()[-3000:]}"
                )
            time.sleep(0.3)
        raise AssertionError(f"controller not up after {timeout} s:\n{self.output()[-3000:]}")

    def interrupt(self, timeout: float = 40.0, sig: int = signal.SIGINT) -> int:
        """Ctrl-C (SIGINT, or `sig`) and wait; the exit status."""
        assert self.proc is not None
        self.remember_descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def assert_clean(self) -> None:
        """No process the demo started is alive and its temp dir is gone."""
        alive = []
        for pid in self.descendants:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {' '.join(p.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                pass
        assert not alive, f"left running: {alive}"
        # Even ONNX Runtime's $TMPDIR/.ses: the demo gives its children a TMPDIR of its own.
        left = list(self.tmpdir.iterdir())
        assert left == [], left

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
