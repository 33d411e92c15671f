"""systemd `Type=notify` support without depending on systemd: datagrams to $NOTIFY_SOCKET.

The same small class as `agent/systemd.py` (the controller never imports the agent), and
`serve()`, which runs uvicorn with READY=1 once the API listens and WATCHDOG=1 from the event
loop at half of $WATCHDOG_USEC, so a wedged loop is restarted. Outside systemd every
notification is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval_s = self._watchdog_interval(env)

    @staticmethod
    def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
        """Half the watchdog timeout systemd set for us, or None when there is none."""
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 2_000_000 if value > 0 else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send `KEY=value` lines in one datagram; False (logged) if it could not be sent."""
        if not self.address:
            return False
        addr = self.address
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), addr)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")


def serve(app: Any, host: str, port: int, *, log_level: str = "info") -> None:
    """`uvicorn.run` for systemd: READY=1 once the port listens (not before, as a lifespan
    hook would), WATCHDOG=1 from the event loop itself, STOPPING=1 on shutdown."""
    import uvicorn

    notifier = Notifier()

    async def ping(interval: float) -> None:
        while True:
            notifier.watchdog()
            await asyncio.sleep(interval)

    class NotifyingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.should_exit:
                return
            notifier.ready(f"listening on {host}:{port}")
            if notifier.watchdog_interval_s:
                self._watchdog = asyncio.ensure_future(ping(notifier.watchdog_interval_s))

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            notifier.stopping()
            await super().shutdown(sockets=sockets)

    NotifyingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level)).run()
