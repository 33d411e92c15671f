"""Fixtures for real parts: a mosquitto per test on a free port, a PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import Mosquitto

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real broker with its own config in a temp dir; anonymous, MQTT v5 and 3.1.1."""
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    with Mosquitto(broker_dir) as broker:
        yield broker


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[object]:
    """Start brokers with custom config lines (listeners, password_file, acl_file)."""
    started: list[Mosquitto] = []

    def start(extra_config: str = "", port: int | None = None) -> Mosquitto:
        workdir = tmp_path / f"broker{len(started)}"
        workdir.mkdir()
        broker = Mosquitto(workdir, extra_config=extra_config, port=port).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def _pg_admin_connect():  # type: ignore[no-untyped-def]
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 ({exc.__class__.__name__})")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    SQLAlchemy URL form (`postgresql+psycopg://`). Skips with the reason when no server answers.
    """
    admin = _pg_admin_connect()
    name = f"lepton_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
