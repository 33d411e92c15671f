"""Helpers for deployment tests: an offline systemd root for `systemd-analyze`, and real
controller processes (`lepton-controller serve`) with their own config."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lepton_edge.agent.cli.enroll import dump_toml
from tests.mosquitto import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def make_system_root(root: Path) -> Path:
    """A directory `systemd-analyze verify --root` accepts: the host's unit library, merged /usr."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["cp", "-a", "/usr/lib/systemd/system", str(root / "usr/lib/systemd/")], check=True
    )
    for link in ("lib", "bin", "sbin"):
        if not (root / link).exists():
            (root / link).symlink_to(f"usr/{link}")
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )


def systemd_version() -> int:
    out = subprocess.run(
        ["systemctl", "--version"], capture_output=True, text=True, encoding="utf-8"
    ).stdout
    return int(out.split()[1])


# --- a real controller process -------------------------------------------------------------------

BIN = Path(sys.executable).parent


class ControllerProcess:
    """`lepton-controller serve` as systemd would run it: its own TOML config, a free port,
    $NOTIFY_SOCKET optional. `api()` talks to it with the bootstrap admin token."""

    def __init__(self, workdir: Path, settings: dict[str, Any]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.admin_token = "lep_test-admin-" + workdir.name
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "state_dir": str(workdir / "state"),
            "http_host": "127.0.0.1",
            "http_port": self.port,
            "bootstrap_admin_token": self.admin_token,
            "mqtt": {"enabled": False},
        }
        for key, value in settings.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config = workdir / "controller.toml"
        self.config.write_text(dump_toml(config))
        self.log = workdir / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> ControllerProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "lepton-controller"),
                    "--log-level",
                    "INFO",
                    "serve",
                    "--config",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited {self.proc.returncode}: {self.log_tail()}")
            try:
                reply = httpx.get(f"{self.url}/healthz", timeout=2)
                if reply.status_code == 200:
                    return dict(reply.json())
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"controller not healthy after {timeout}s: {self.log_tail()}")

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.request(
            method, f"{self.url}/api/v1{path}", headers=headers, timeout=30, **kwargs
        )

    def enroll_token(self, device_id: str | None = None) -> str:
        reply = self.api("POST", "/tokens", json={"scope": "enroll", "device_id": device_id})
        assert reply.status_code == 201, reply.text
        return str(reply.json()["token"])

    def metrics(self) -> dict[str, float]:
        """Unlabelled Prometheus samples from /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                out[name] = float(value)
        return out

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
