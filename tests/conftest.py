"""Fixtures for real parts: a mosquitto per test on a free port, a PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class ReferenceBundle:
    """The Fashion-MNIST reference bundle (issue 3), built once per test session."""

    dir: Path
    manifest: Any  # shared.manifest.Manifest
    key: Any  # Ed25519PrivateKey that signed it
    public_pem: bytes


@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory: pytest.TempPathFactory) -> ReferenceBundle:
    """Every variant of examples/fashion_mnist built, measured and signed (about 10-20 s):
    calibrated on 500 training images, evaluated on 2000 test images."""
    from controller.optimize import build_bundle
    from controller.optimize.evaluate import SpeedBudget
    from shared.idx import FASHION_MNIST_LABELS, fashion_mnist
    from shared.signing import generate_key, public_pem

    root = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist"
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
    )
    return ReferenceBundle(out, manifest, key, public_pem(key.public_key()))
