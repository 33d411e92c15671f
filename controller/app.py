"""The FastAPI app: `create_app(settings)` wires database, MQTT bridge, rollout loop and routes.

`app.state.controller` (a `Controller`) gives in-process callers (the demo, tests) the same
objects the API uses: `db`, `bridge`, `engine`, `store`, `publish()`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError

from controller.api import artifacts, devices, metrics, models, rollouts, tokens
from controller.bridge import Bridge
from controller.bundles import BundleStore
from controller.config import ControllerSettings
from controller.db import Database
from controller.fleet import Fleet
from controller.leader import Leader, make_leader
from controller.rollout import RolloutEngine
from controller.security import Scope, register_token
from shared import __version__
from shared.messages import CommandMessage

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
API_PREFIX = "/api/v1"


@dataclass
class Controller:
    settings: ControllerSettings
    db: Database
    store: BundleStore
    fleet: Fleet
    leader: Leader
    engine: RolloutEngine
    bridge: Bridge | None = None
    started: bool = False

    def publish(self, device_id: str, command: CommandMessage) -> bool:
        return self.bridge.publish_command(device_id, command) if self.bridge else False

    def start(self) -> None:
        """Migrate, register the bootstrap token, start bridge and rollout loop (once)."""
        if self.started:
            return
        self.started = True
        self.db.migrate()
        if self.settings.bootstrap_admin_token:
            with self.db.session() as session:
                register_token(
                    session, self.settings.bootstrap_admin_token, Scope.ADMIN, "bootstrap"
                )
        if self.settings.mqtt.enabled:
            self.bridge = Bridge(self.settings, self.db, self.fleet)
            self.bridge.start()
        if self.settings.rollout_loop:
            self.engine.start()

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        self.engine.stop()
        if self.bridge:
            self.bridge.stop()
        self.leader.close()
        self.db.close()


def build_controller(settings: ControllerSettings) -> Controller:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url())
    store = BundleStore(settings.artifact_dir(), settings.bundle_dir(), settings.key_path())
    leader = make_leader(settings.db_url())
    holder: dict[str, Controller] = {}
    engine = RolloutEngine(
        settings, db, lambda device_id, cmd: holder["c"].publish(device_id, cmd), leader
    )
    fleet = Fleet(shared=settings.mqtt.shared_subscription_group is not None)
    controller = Controller(settings, db, store, fleet, leader, engine)
    holder["c"] = controller
    return controller


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 whose `detail` is a list of errors, each naming its field; plus one summary line."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return JSONResponse(
        status_code=422,
        content={
            "message": f"{field or 'request'}: {first.get('msg', 'invalid')}",
            "detail": [
                {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                for e in errors
            ],
        },
    )


async def _data_error(_request: Request, exc: Exception) -> JSONResponse:
    """Values the database cannot hold (a NUL byte for PostgreSQL) are the client's mistake."""
    return JSONResponse(
        status_code=422,
        content={
            "message": "a parameter holds a value the database cannot store (e.g. a NUL byte)",
            "detail": str(getattr(exc, "orig", exc)).splitlines()[0],
        },
    )


def create_app(settings: ControllerSettings | None = None) -> FastAPI:
    settings = settings or ControllerSettings()
    controller = build_controller(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        controller.start()
        try:
            yield
        finally:
            controller.stop()

    app = FastAPI(
        title="lepton-edge controller",
        version=__version__,
        description="Fleet registry, variant selection from measured latency, staged rollouts.",
        lifespan=lifespan,
    )
    app.state.controller = controller
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _data_error)
    for module in (devices, models, rollouts, tokens):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(artifacts.router)
    app.include_router(metrics.router)
    if WEB_DIR.is_dir():
        app.mount("/ui", StaticFiles(directory=WEB_DIR, html=True), name="ui")

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse("/ui/")

    return app
