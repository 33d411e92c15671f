"""The registry at fleet scale: cursor pages over devices and events, server-side filters and
sorting, the fleet summary the dashboard draws from, and one-line errors for bad cursors and
unknown filters (on SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from lepton_edge.controller.app import create_app
from lepton_edge.controller.fleet import Batch
from lepton_edge.shared.messages import Event, PowerLevel, State
from tests.controller.conftest import AUTH, make_settings
from tests.controller.helpers import profile

LEVELS = list(PowerLevel)


def register(client: TestClient, ids: range, now: float) -> None:
    """Devices `dev-00000`...: online every third offline, levels and classes in turn."""
    boards = [profile(cpu_model="x86 box"), profile(cpu_model="Cortex-A72", arch="aarch64")]
    states = [
        State(
            device_id=f"dev-{n:05d}",
            ts=now,
            status="offline" if n % 3 == 0 else "online",
            hardware=boards[n % 2],
            active_variant="onnx-int8-static" if n % 4 else "onnx-fp32",
            power_level=LEVELS[n % 4],
        )
        for n in ids
    ]
    ctl = client.app.state.controller  # type: ignore[attr-defined]
    with ctl.db.session() as s:
        ctl.fleet.apply(s, Batch(states=states))


def walk(client: TestClient, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Every page from the first, following the cursor; (rows, pages)."""
    rows: list[dict[str, Any]] = []
    pages = 0
    query = dict(params)
    while True:
        r = client.get("/api/v1/devices", params=query, headers=AUTH)
        assert r.status_code == 200, r.text
        pages += 1
        rows += r.json()
        cursor = r.headers.get("x-next-cursor")
        if not cursor:
            assert "link" not in r.headers
            return rows, pages
        assert r.headers["link"].endswith('>; rel="next"')
        query = {**params, "cursor": cursor}


def test_cursor_pages_walk_every_device_once(client: TestClient) -> None:
    now = time.time()
    register(client, range(1000), now)
    rows, pages = walk(client, {"limit": 100})
    assert pages == 10 and [d["id"] for d in rows] == [f"dev-{n:05d}" for n in range(1000)]
    # newest first, by id
    r = client.get("/api/v1/devices", params={"limit": 3, "sort": "-id"}, headers=AUTH)
    assert [d["id"] for d in r.json()] == ["dev-00999", "dev-00998", "dev-00997"]
    # by last seen, with a filter; a device seen after the walk began shows up on a later page
    params = {"limit": 50, "sort": "last_seen", "online": True}
    first = client.get("/api/v1/devices", params=params, headers=AUTH)
    assert [d["id"] for d in first.json()][:3] == ["dev-00001", "dev-00002", "dev-00004"]
    register(client, range(5000, 5001), now + 1)
    rest, _ = walk(client, {**params, "cursor": first.headers["x-next-cursor"]})
    seen = [d["id"] for d in first.json() + rest]
    assert seen == [f"dev-{n:05d}" for n in range(1000) if n % 3] + ["dev-05000"]
    r = client.get("/api/v1/devices", params={"limit": 10, "offset": 20}, headers=AUTH)
    assert r.json()[0]["id"] == "dev-00020"  # offsets still work for small fleets


def test_bad_cursor_is_400_and_an_unknown_filter_422(client: TestClient) -> None:
    register(client, range(30), time.time())
    r = client.get("/api/v1/devices", params={"limit": 10}, headers=AUTH)
    cursor = r.headers["x-next-cursor"]
    for bad in ("garbage", "eyJ4IjogMX0", cursor[:-4]):
        r = client.get("/api/v1/devices", params={"cursor": bad}, headers=AUTH)
        assert r.status_code == 400 and "cursor" in r.json()["detail"], r.text
    r = client.get("/api/v1/devices", params={"cursor": cursor, "sort": "-last_seen"}, headers=AUTH)
    assert r.status_code == 400 and "another query" in r.json()["detail"]
    r = client.get("/api/v1/devices", params={"colour": "red"}, headers=AUTH)
    assert r.status_code == 422 and "colour" in r.text
    r = client.get("/api/v1/devices", params={"sort": "cpu"}, headers=AUTH)
    assert r.status_code == 422
    r = client.get("/api/v1/events", params={"cursor": "garbage"}, headers=AUTH)
    assert r.status_code == 400


def test_fleet_summary_counts_without_listing_devices(client: TestClient) -> None:
    """The aggregates match what counting the full device list gives."""
    register(client, range(120), time.time())
    for n in (1, 2, 7):
        r = client.put(f"/api/v1/devices/dev-{n:05d}/tags", json={"tags": ["field"]}, headers=AUTH)
        assert r.status_code == 200, r.text
    summary = client.get("/api/v1/devices/summary", headers=AUTH).json()
    devices = client.get("/api/v1/devices", headers=AUTH).json()

    def count(field: str) -> dict[str, int]:
        return dict(Counter("none" if d[field] is None else str(d[field]) for d in devices))

    assert summary["total"] == len(devices) == 120
    assert summary["online"] == {"online": 80, "offline": 40}
    assert summary["power_level"] == count("power_level")
    assert len(summary["power_level"]) >= 4
    assert summary["variant"] == count("active_variant")
    assert summary["hardware_class"] == count("hardware_class")
    assert summary["bundle"] == count("active_bundle")
    assert summary["arch"] == count("arch") and summary["tag"] == {"field": 3}
    # part of the id, as the dashboard's search box sends it (LIKE wildcards are literal)
    found = client.get("/api/v1/devices", params={"q": "-0011"}, headers=AUTH).json()
    assert [d["id"] for d in found] == [f"dev-0011{n}" for n in range(10)]
    assert client.get("/api/v1/devices", params={"q": "%"}, headers=AUTH).json() == []
    field = client.get("/api/v1/devices/summary", params={"tag": "field"}, headers=AUTH).json()
    assert field["total"] == 3
    only = client.get("/api/v1/devices/summary", params={"online": False}, headers=AUTH).json()
    assert only["total"] == 40 and only["online"] == {"online": 0, "offline": 40}


def test_events_page_by_cursor(client: TestClient) -> None:
    now = time.time()
    register(client, range(3), now)
    events = [
        Event(device_id=f"dev-{n % 3:05d}", ts=now, seq=n, kind="policy", reason=f"event {n}")
        for n in range(60)
    ]
    ctl = client.app.state.controller  # type: ignore[attr-defined]
    with ctl.db.session() as s:
        ctl.fleet.apply(s, Batch(events=events))
    reasons: list[str] = []
    query: dict[str, Any] = {"limit": 7, "device_id": "dev-00001"}
    while True:
        r = client.get("/api/v1/events", params=query, headers=AUTH)
        assert r.status_code == 200, r.text
        reasons += [e["reason"] for e in r.json()]
        if not r.headers.get("x-next-cursor"):
            break
        query["cursor"] = r.headers["x-next-cursor"]
    assert reasons == [f"event {n}" for n in reversed(range(60)) if n % 3 == 1]
    r = client.get("/api/v1/events", params={**query, "device_id": "dev-00002"}, headers=AUTH)
    assert r.status_code == 400  # a cursor of another device's events


@pytest.mark.postgres
def test_paging_queries_use_indexes_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """Every SELECT with ORDER BY that the device and event pages and a device's detail run,
    captured as the API runs it and EXPLAINed on PostgreSQL with sequential scans and sorts
    priced out: none scans a whole table or sorts (an index gives each page in its order)."""
    settings = make_settings(tmp_path, postgres_url, rollout_loop=False)
    with TestClient(create_app(settings)) as client:
        register(client, range(300), time.time())
        ctl = client.app.state.controller  # type: ignore[attr-defined]
        statements: list[tuple[str, Any]] = []

        def grab(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
            tables = ("FROM devices", "FROM telemetry_samples", "FROM events")
            paged = sql.lstrip().startswith("SELECT") and "ORDER BY" in sql and not many
            if paged and any(t in sql for t in tables):
                statements.append((sql, params))

        event.listen(ctl.db.engine, "before_cursor_execute", grab)
        pages = ({"limit": 50}, {"limit": 50, "sort": "-last_seen"}, {"limit": 50, "online": True})
        for query in pages:
            first = client.get("/api/v1/devices", params=query, headers=AUTH)
            cursor = first.headers["x-next-cursor"]
            client.get("/api/v1/devices", params={**query, "cursor": cursor}, headers=AUTH)
        page = client.get("/api/v1/events", params={"limit": 5}, headers=AUTH)
        assert page.status_code == 200
        client.get("/api/v1/devices/dev-00007", headers=AUTH)
        event.remove(ctl.db.engine, "before_cursor_execute", grab)
        assert len(statements) >= 6
        with ctl.db.engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_sort = off")
            for sql, params in statements:
                plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {sql}", params))
                assert "Seq Scan" not in plan and "Sort" not in plan, f"{sql}\n{plan}"
