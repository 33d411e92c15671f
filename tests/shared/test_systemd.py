"""sd_notify over a real unix datagram socket, as systemd would receive it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from lepton_edge.shared.systemd import Notifier


def listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    return sock


def test_ready_status_watchdog_lines(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with listen(path) as sock:
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000000"})
        assert n.watchdog_interval_s == 10.0
        assert n.ready("connected")
        assert sock.recv(1024) == b"READY=1\nSTATUS=connected"
        assert n.watchdog()
        assert sock.recv(1024) == b"WATCHDOG=1"
        assert n.stopping()
        assert sock.recv(1024) == b"STOPPING=1\nSTATUS=stopping"


def test_abstract_socket() -> None:
    name = f"lepton-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(1024) == b"STATUS=hello"


def test_without_systemd_everything_is_a_noop(tmp_path: Path) -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval_s is None
    assert n.ready() is False
    # a watchdog meant for another process is not ours
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    # a socket that went away is logged, not raised
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready() is False
