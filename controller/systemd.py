"""`serve()`: uvicorn under systemd `Type=notify`, READY=1 once the API listens and WATCHDOG=1
from the event loop at half of $WATCHDOG_USEC, so a wedged loop is restarted."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from lepton_edge.shared.systemd import Notifier


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
