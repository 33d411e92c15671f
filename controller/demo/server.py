"""The demo's controller: the real FastAPI app under uvicorn, in a thread of the demo process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from lepton_edge.shared.errors import UserError


class ControllerServer:
    def __init__(self, settings: Any) -> None:
        import uvicorn

        from lepton_edge.controller.app import create_app

        self.settings = settings
        self.url = f"http://{settings.http_host}:{settings.http_port}"
        config = uvicorn.Config(
            create_app(settings),
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="controller", daemon=True)

    def start(
        self, timeout: float = 30.0, cancelled: Callable[[], bool] = lambda: False
    ) -> ControllerServer:
        """Start serving; return once /healthz answers (or at once when `cancelled()`)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not cancelled():
            if not self._thread.is_alive():
                raise UserError(f"the controller did not start on {self.url} (see the log above)")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        if cancelled():
            return self
        raise UserError(f"the controller did not answer on {self.url} within {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5.0)
