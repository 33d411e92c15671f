"""What the Type=notify units rely on, with the real commands: READY=1 once serving, WATCHDOG=1
while alive, STOPPING=1 on SIGTERM and a clean exit, and exit status 2 for a bad config (the units'
RestartPreventExitStatus=2: restarting cannot fix a typo)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.support import ControllerProcess

BIN = Path(sys.executable).parent


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}
    yield sock, env
    sock.close()


def receive_until(sock: socket.socket, prefix: str) -> list[str]:
    messages = [sock.recv(4096).decode()]
    while not messages[-1].startswith(prefix):
        messages.append(sock.recv(4096).decode())
    return messages


def test_controller_notifies_systemd(
    notify_socket: tuple[socket.socket, dict[str, str]], tmp_path: Path
) -> None:
    sock, env = notify_socket
    controller = ControllerProcess(tmp_path / "controller", {})
    os.environ.pop("WATCHDOG_PID", None)
    controller.start(env=env, wait=False)
    try:
        ready = receive_until(sock, "READY=1")[-1]
        assert f"listening on 127.0.0.1:{controller.port}" in ready
        controller.wait_healthy(5)  # READY came after the port listens, not before
        assert receive_until(sock, "WATCHDOG=1")[-1] == "WATCHDOG=1"
        controller.kill(signal.SIGTERM)
        assert receive_until(sock, "STOPPING=1")
        # uvicorn re-raises SIGTERM after its graceful shutdown; systemd counts death by SIGTERM
        # as a clean exit, so Restart=on-failure does not restart a stopped controller.
        assert controller.proc is not None and controller.proc.returncode in (0, -signal.SIGTERM)
    finally:
        controller.stop()


@pytest.mark.parametrize(
    ("command", "config_text"),
    [
        ("lepton-controller", "http_port = 'eighty'\n"),
        ("lepton-controller", "no_such_setting = 1\n"),
        ("lepton-agent", "[mqtt]\nport = 0\n"),
        ("lepton-agent", "this is not toml\n"),
    ],
)
def test_a_bad_config_exits_2_in_one_line(command: str, config_text: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(config_text)
    subcommand = "serve" if command == "lepton-controller" else "run"
    result = subprocess.run(
        [str(BIN / command), subcommand, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert (len(lines) == 1 and str(config) in lines[0]) or "setting" in lines[0], result.stderr
