"""The FastAPI app: `create_app(settings)` mounts the routes on a `lepton_edge.controller.core.Controller`.

`app.state.controller` gives in-process callers (the demo, tests) the same objects the API
uses: `db`, `bridge`, `engine`, `store`, `publish()`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError

from lepton_edge.controller.api import artifacts, build, bundles, devices, metrics, rollouts, tokens
from lepton_edge.controller.config import ControllerSettings
from lepton_edge.controller.core import Controller
from lepton_edge.shared import __version__

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
API_PREFIX = "/api/v1"


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
    controller = Controller(settings)

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
    app.add_middleware(metrics.RequestTiming, histogram=controller.metrics.api_request_seconds)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _data_error)
    for module in (devices, bundles, rollouts, tokens):
        app.include_router(module.router, prefix=API_PREFIX)
    missing = build.missing_module()
    if missing is None:
        app.include_router(build.router, prefix=API_PREFIX)
    else:
        log.info("variant factory not installed (no %s): POST /bundles/build is off", missing)

        @app.post(f"{API_PREFIX}/bundles/build", include_in_schema=False)
        def build_unavailable() -> JSONResponse:
            return JSONResponse(
                status_code=501,
                content={
                    "detail": f"this controller has no variant factory ({missing} is not "
                    "installed): pip install 'lepton-edge[factory]', or build with `lepton build` "
                    "elsewhere and upload to /api/v1/bundles"
                },
            )

    app.include_router(artifacts.router)
    app.include_router(metrics.router)
    if WEB_DIR.is_dir():
        app.mount("/ui", StaticFiles(directory=WEB_DIR, html=True), name="ui")

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse("/ui/")

    return app
