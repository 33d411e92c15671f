"""Fixtures for real parts: a mosquitto per test on a free port, a PostgreSQL database (the
configured server, or a throwaway cluster when none answers)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mosquitto import Mosquitto
from tests.paths import FASHION_MNIST_MODELS
from tests.postgres import Postgres

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


def _answers(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A libpq URL with the right to create databases: the server at `LEPTON_TEST_POSTGRES_URL`
    (default 127.0.0.1:5432) when it answers, otherwise a throwaway cluster for this session."""
    url = os.environ.get("LEPTON_TEST_POSTGRES_URL", PG_ADMIN_URL)
    if _answers(url):
        yield url
        return
    try:
        server = Postgres().start()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL at {url} and none could be started: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    SQLAlchemy URL form (`postgresql+psycopg://`)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"lepton_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(postgres_admin_url, autocommit=True, connect_timeout=3)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_admin_url).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skip is a failure: a missing service or package must not pass unseen."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("CI") == "true" and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every test must run: {reason}"


@dataclass(frozen=True)
class ReferenceBundle:
    """The Fashion-MNIST reference bundle (issue 3), built once per test session."""

    dir: Path
    manifest: Any  # shared.manifest.Manifest
    key: Any  # Ed25519PrivateKey that signed it
    public_pem: bytes


@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory: pytest.TempPathFactory) -> ReferenceBundle:
    """Every variant of the Fashion-MNIST reference models built, measured and signed (about 10-20 s):
    calibrated on 500 training images, evaluated on 2000 test images."""
    from lepton_edge.controller.factory import build_bundle
    from lepton_edge.controller.factory.evaluate import SpeedBudget
    from lepton_edge.shared.idx import FASHION_MNIST_LABELS, fashion_mnist
    from lepton_edge.shared.signing import generate_key, public_pem

    root = FASHION_MNIST_MODELS
    x_train, _ = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")
    key = generate_key()
    out = tmp_path_factory.mktemp("reference") / "bundle"
    manifest = build_bundle(
        out,
        onnx=root / "model.onnx",
        tflite=root / "model.tflite",
        calib_x=x_train[:500],
        eval_x=x_test[:2000],
        eval_y=y_test[:2000],
        key=key,
        model_name="fashion-mnist-cnn",
        labels=FASHION_MNIST_LABELS,
        budget=SpeedBudget(min_runs=20, max_runs=200, seconds=0.2),
        input_scale=1 / 255,
    )
    return ReferenceBundle(out, manifest, key, public_pem(key.public_key()))
