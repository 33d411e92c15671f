"""App basics: migrations on both databases, health, auth, UI mount, 404s and 422s."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import inspect

from tests.controller.conftest import AUTH


def test_migrations_create_every_table(client: TestClient) -> None:
    db = client.app.state.controller.db  # type: ignore[attr-defined]
    tables = set(inspect(db.engine).get_table_names())
    assert {"devices", "telemetry_samples", "rollouts", "rollout_devices", "api_tokens"} <= tables
    assert "alembic_version" in tables
    db.migrate()  # idempotent


def test_healthz_and_metrics_are_public(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["mqtt"] is None
    text = client.get("/metrics").text
    assert "lepton_devices_online 0" in text
    assert "# TYPE lepton_rollouts gauge" in text


def test_tokens_401_403(client: TestClient) -> None:
    assert client.get("/api/v1/devices").status_code == 401
    assert (
        client.get("/api/v1/devices", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    made = client.post("/api/v1/tokens", json={"scope": "read"}, headers=AUTH)
    assert made.status_code == 201
    read = {"Authorization": f"Bearer {made.json()['token']}"}
    assert client.get("/api/v1/devices", headers=read).status_code == 200
    denied = client.post("/api/v1/tokens", json={"scope": "admin"}, headers=read)
    assert denied.status_code == 403
    # stored hashed only
    from lepton_edge.controller.tables import ApiToken

    with client.app.state.controller.db.session() as s:  # type: ignore[attr-defined]
        hashes = [t.token_hash for t in s.query(ApiToken)]
    assert made.json()["token"] not in hashes and len(hashes) == 2


def test_unknown_things_are_404_and_bad_bodies_422_naming_the_field(client: TestClient) -> None:
    assert client.get("/api/v1/devices/nope", headers=AUTH).status_code == 404
    assert client.get("/api/v1/rollouts/nope", headers=AUTH).status_code == 404
    assert client.get("/api/v1/bundles/nope", headers=AUTH).status_code == 404
    assert client.get(f"/artifacts/{'0' * 64}", headers=AUTH).status_code == 404
    bad = client.post(
        "/api/v1/rollouts", json={"bundle_id": "x", "target": {"al": True}}, headers=AUTH
    )
    assert bad.status_code == 422
    assert "target.al" in bad.json()["message"]
    bad = client.post("/api/v1/rollouts", content=b"{not json", headers=AUTH)
    assert bad.status_code == 422
    missing = client.post(
        "/api/v1/rollouts", json={"bundle_id": "nope", "target": {"all": True}}, headers=AUTH
    )
    assert missing.status_code == 404


def test_root_redirects_to_ui_when_web_exists(client: TestClient) -> None:
    from lepton_edge.controller.app import WEB_DIR

    if not WEB_DIR.is_dir():
        return
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"


def test_an_offset_the_database_cannot_hold_is_422_not_500(client: TestClient) -> None:
    """Found by the schemathesis run: offset=2**63 overflowed SQLite's INTEGER into a 500."""
    r = client.get("/api/v1/devices", params={"offset": 2**63}, headers=AUTH)
    assert r.status_code == 422 and "offset" in r.json()["message"]


def test_openapi_describes_the_shared_message_shapes(client: TestClient) -> None:
    """Clients (the dashboard among them) read real fields, not `dict[str, Any]`."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    def ref(prop: dict) -> str:  # type: ignore[type-arg]
        options = prop.get("anyOf", [prop])
        return next(o["$ref"] for o in options if "$ref" in o).rsplit("/", 1)[1]

    device = schemas["DeviceOut"]["properties"]
    assert ref(device["last_telemetry"]) == "Telemetry"
    assert ref(device["hardware"]) == "HardwareProfile"
    assert ref(device["power_level"]) == "PowerLevel"
    assert schemas["DeviceDetail"]["properties"]["history"]["items"]["$ref"].endswith("/Telemetry")
    assert ref(schemas["EventOut"]["properties"]["kind"]) == "EventKind"
    assert {"cpu", "memory", "inference", "battery"} <= set(schemas["Telemetry"]["properties"])
    rollout = schemas["RolloutOut"]["properties"]
    assert ref(rollout["target"]) == "RolloutTarget" and ref(rollout["options"]) == "RolloutOptions"
