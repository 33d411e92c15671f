"""A real mosquitto on a free port with its own config, for tests and benches.

Never touches a broker already running on 1883: every instance gets a temp dir, a free port and
a config that lists only what the test asked for (listeners, password file, ACL).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class Mosquitto:
    """One broker process. `stop()`/`start()` keep the port, so clients can reconnect to it."""

    def __init__(self, workdir: Path, extra_config: str = "", port: int | None = None) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        default_listener = (
            ""
            if "listener " in self.extra_config
            else (f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        )
        # As root, mosquitto drops to user `mosquitto`, which cannot write pytest's 0700 temp
        # dirs: persistence (sessions across restart) and the log would silently be lost.
        as_root = "user root\n" if os.geteuid() == 0 and "user " not in self.extra_config else ""
        self.config.write_text(
            as_root + "per_listener_settings false\n"
            f"{default_listener}"
            f"persistence true\npersistence_location {self.workdir}/\n"
            f"log_dest file {self.log}\nlog_type all\n"
            "max_queued_messages 100000\n"
            f"{self.extra_config}\n"
        )

    def start(self) -> Mosquitto:
        self.write_config()
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start; log: {self.log_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
