"""Controller fixtures: every test that takes `db_url` runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lepton_edge.controller.app import create_app
from lepton_edge.controller.config import ControllerSettings
from tests.mosquitto import Mosquitto

ADMIN = "lep_test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    return str(request.getfixturevalue("postgres_url"))


def make_settings(
    tmp_path: Path, db_url: str, broker: Mosquitto | None = None, **extra: Any
) -> ControllerSettings:
    mqtt: dict[str, Any] = {"enabled": broker is not None, "username": None}
    if broker is not None:
        mqtt |= {"host": broker.host, "port": broker.port}
    mqtt |= extra.pop("mqtt", {})
    ingest = {"flush_interval_ms": 20} | extra.pop("ingest", {})
    rollout = {"tick_s": 0.1, "soak_s": 0, "wave_timeout_s": 30} | extra.pop("rollout", {})
    return ControllerSettings(
        state_dir=tmp_path / "state",
        database_url=db_url,
        bootstrap_admin_token=ADMIN,
        mqtt=mqtt,
        ingest=ingest,
        rollout=rollout,
        **extra,
    )


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> ControllerSettings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
def client(settings: ControllerSettings) -> Iterator[TestClient]:
    """The app without a broker (API only)."""
    with TestClient(create_app(settings)) as c:
        yield c


class LiveController:
    """The app served by uvicorn on a free port, in a thread (real HTTP)."""

    def __init__(self, settings: ControllerSettings) -> None:
        import threading

        import uvicorn

        self.settings = settings
        self.app = create_app(settings)
        self.controller = self.app.state.controller
        self.url = settings.base_url()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=settings.http_port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveController:
        from tests.controller.helpers import wait_for

        self.thread.start()
        wait_for(lambda: self.server.started, 20, what="uvicorn to start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def live_settings(
    tmp_path: Path, db_url: str, broker: Mosquitto | None = None, **extra: Any
) -> ControllerSettings:
    from tests.mosquitto import free_port

    port = free_port()
    return make_settings(
        tmp_path, db_url, broker, http_port=port, public_url=f"http://127.0.0.1:{port}", **extra
    )


@pytest.fixture
def live(tmp_path: Path, db_url: str, mosquitto: Mosquitto) -> Iterator[LiveController]:
    server = LiveController(live_settings(tmp_path, db_url, mosquitto)).start()
    try:
        yield server
    finally:
        server.stop()
