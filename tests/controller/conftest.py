"""Controller fixtures: every test that takes `db_url` runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.config import ControllerSettings
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
