"""`/metrics` (built by `lepton_edge.controller.observability`) and `/healthz`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import Histogram
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lepton_edge.controller.api.deps import ControllerDep
from lepton_edge.controller.observability import CONTENT_TYPE

router = APIRouter(tags=["observability"])


class RequestTiming:
    """Times every HTTP request into `histogram` by route template (not the raw path, which
    would make a series per device). Pure ASGI, so streamed downloads are not buffered."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_seeing_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_seeing_status)
        finally:
            self.histogram.labels(scope["method"], _template(scope), str(status)).observe(
                time.perf_counter() - started
            )


def _template(scope: Scope) -> str:
    """The matched route's path template with the router's prefix (`/api/v1/devices/{device_id}`);
    the route object may hold it without the prefix, so the prefix is read off the request."""
    route = scope.get("route")
    pattern, template = getattr(route, "path_regex", None), getattr(route, "path", None)
    if pattern is None or template is None:
        return "unmatched"
    path: str = scope["path"]
    for i, char in enumerate(path):
        if char == "/" and pattern.match(path[i:]):
            return path[:i] + str(template)
    return str(template)


@router.get("/metrics", response_class=Response)
def metrics(controller: ControllerDep) -> Response:
    """The fleet, ingest, rollouts, API latency and this process, for Prometheus."""
    return Response(controller.metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/healthz")
def healthz(controller: ControllerDep) -> dict[str, Any]:
    """200 when the database answers; says whether the broker link is up."""
    with controller.db.session() as session:
        session.execute(text("SELECT 1"))
    bridge = controller.bridge
    return {
        "status": "ok",
        "database": controller.db.engine.dialect.name,
        "mqtt": None if bridge is None else bridge.connected.is_set(),
        "leader": controller.leader.is_leader(),
    }
