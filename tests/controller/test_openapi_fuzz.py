"""Schemathesis against the OpenAPI spec: no input produces a 5xx (on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings

from lepton_edge.controller.app import create_app
from lepton_edge.controller.bundles import pack
from tests.controller.conftest import AUTH, make_settings
from tests.controller.helpers import make_bundle


@pytest.fixture
def fuzz_app(tmp_path: Path, db_url: str) -> Iterator[FastAPI]:
    app = create_app(make_settings(tmp_path, db_url, rollout_loop=False))
    controller = app.state.controller
    controller.start()
    # something to find: a bundle and a device, so paths with real ids get exercised too
    manifest_dir = tmp_path / "b"
    make_bundle(manifest_dir, controller.store.key)
    with controller.db.session() as session:
        controller.store.add_archive(session, pack(manifest_dir))
    try:
        yield app
    finally:
        controller.stop()


@pytest.mark.slow
def test_no_server_errors(fuzz_app: FastAPI) -> None:
    """Every operation, 25 generated requests each (schemathesis' hypothesis strategies)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(headers=AUTH)
            statuses[response.status_code // 100] += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:200]}"
                )

        check()
    assert not failures, "\n".join(failures[:10])
    assert statuses[2] > 50 and statuses[4] > 50, statuses  # it really exercised the API
