"""Enrollment and the generated broker files, enforced by a real mosquitto."""

from __future__ import annotations

import getpass
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from lepton_edge.controller.app import create_app
from lepton_edge.controller.cli import controller_main
from lepton_edge.controller.security import mosquitto_hash, verify_mosquitto_hash
from lepton_edge.shared.messages import EnrollResponse
from lepton_edge.shared.signing import load_public_key
from tests.controller.conftest import AUTH, make_settings
from tests.controller.helpers import wait_for
from tests.mosquitto import free_port


def test_mosquitto_hash_format() -> None:
    line = mosquitto_hash("secret", salt=b"\x00" * 12)
    assert line.startswith("$7$101$AAAAAAAAAAAAAAAA$") and len(line.split("$")[-1]) == 88
    assert verify_mosquitto_hash("secret", line) and not verify_mosquitto_hash("Secret", line)


def _connect(
    port: int, user: str, password: str
) -> tuple[mqtt.Client, list[tuple[str, bytes]], object]:
    received: list[tuple[str, bytes]] = []
    result: dict[str, object] = {}
    done = threading.Event()
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.time_ns()}", protocol=mqtt.MQTTv5
    )
    c.username_pw_set(user, password)

    def on_connect(_c, _u, _f, reason, _p):  # type: ignore[no-untyped-def]
        result["rc"] = reason
        done.set()

    c.on_connect = on_connect
    c.on_message = lambda _c, _u, m: received.append((m.topic, m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(5)
    return c, received, result.get("rc")


def test_enroll_then_broker_acl_confines_each_device(
    tmp_path: Path, db_url: str, mosquitto_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        tmp_path,
        db_url,
        mqtt={"username": "ctl", "password": "ctl-secret", "public_host": "broker.example"},
    )
    enrolled: dict[str, EnrollResponse] = {}
    with TestClient(create_app(settings)) as client:
        for device in ("dev-a", "dev-b"):
            token = client.post("/api/v1/tokens", json={"scope": "enroll"}, headers=AUTH).json()[
                "token"
            ]
            r = client.post("/api/v1/enroll", json={"token": token, "device_id": device})
            assert r.status_code == 200, r.text
            enrolled[device] = EnrollResponse.model_validate(r.json())
            again = client.post("/api/v1/enroll", json={"token": token, "device_id": device})
            assert again.status_code == 403 and "already used" in again.json()["detail"]
        assert enrolled["dev-a"].mqtt_host == "broker.example"
        load_public_key(enrolled["dev-a"].controller_public_key_pem.encode())  # a real PEM
        assert (
            client.post(
                "/api/v1/enroll", json={"token": "x" * 20, "device_id": "dev-c"}
            ).status_code
            == 403
        )
        bad = client.post("/api/v1/enroll", json={"token": "x" * 20, "device_id": "a/b"})
        assert bad.status_code == 422 and "device_id" in bad.text
        # an enroll token is no API token
        token = client.post("/api/v1/tokens", json={"scope": "enroll"}, headers=AUTH).json()[
            "token"
        ]
        assert (
            client.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"}).status_code
            == 403
        )

    monkeypatch.setenv("LEPTON_CONTROLLER_MQTT__USERNAME", "ctl")
    monkeypatch.setenv("LEPTON_CONTROLLER_MQTT__PASSWORD", "ctl-secret")
    monkeypatch.setenv("LEPTON_CONTROLLER_HOMEASSISTANT__DISCOVERY", "true")
    monkeypatch.setenv("LEPTON_CONTROLLER_HOMEASSISTANT__BROKER_USERNAME", "ha")
    monkeypatch.setenv("LEPTON_CONTROLLER_HOMEASSISTANT__BROKER_PASSWORD", "ha-secret")
    out = tmp_path / "broker-files"
    rc = controller_main(
        [
            "broker-config",
            str(out),
            "--state-dir",
            str(tmp_path / "state"),
            "--database-url",
            db_url,
        ]
    )
    assert rc == 0
    acl = (out / "acl").read_text()
    assert "user dev-a\ntopic readwrite lepton/v1/dev/dev-a/#" in acl
    # announcing devices to Home Assistant: the controller may write its prefix, Home
    # Assistant's own login reads the tree and its prefix
    assert "user ctl\ntopic readwrite lepton/v1/#\ntopic write homeassistant/#\n" in acl
    assert "user ha\ntopic read lepton/v1/#\ntopic readwrite homeassistant/#\n" in acl
    port = free_port()
    broker = mosquitto_factory(
        # as root, mosquitto would drop to its own user and not read files in a 0700 temp dir
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous false\n"
        f"password_file {out / 'passwords'}\nacl_file {out / 'acl'}\n",
        port=port,
    )
    ctl, seen, rc_ctl = _connect(broker.port, "ctl", "ctl-secret")
    assert not rc_ctl.is_failure  # type: ignore[union-attr]
    ctl.subscribe("lepton/v1/#", qos=1)
    a_pw = enrolled["dev-a"].mqtt_password
    a, a_seen, rc_a = _connect(broker.port, "dev-a", a_pw)
    assert not rc_a.is_failure  # type: ignore[union-attr]
    _bad, _, rc_bad = _connect(broker.port, "dev-a", "wrong-password")
    assert rc_bad is not None and rc_bad.is_failure  # type: ignore[union-attr]
    _bad.loop_stop()
    ha, ha_seen, rc_ha = _connect(broker.port, "ha", "ha-secret")
    assert not rc_ha.is_failure  # type: ignore[union-attr]
    ha.subscribe([("lepton/v1/#", 1), ("homeassistant/#", 1)])
    time.sleep(0.3)
    a.subscribe("lepton/v1/dev/dev-b/cmd", qos=1)  # refused by the ACL: nothing will arrive
    a.subscribe("lepton/v1/dev/dev-a/cmd", qos=1)
    time.sleep(0.3)
    a.publish("lepton/v1/dev/dev-b/telemetry", b"spoofed", qos=1).wait_for_publish(5)
    a.publish("lepton/v1/dev/dev-a/telemetry", b"own", qos=1).wait_for_publish(5)
    ctl.publish("lepton/v1/dev/dev-b/cmd", b"for b", qos=1).wait_for_publish(5)
    ctl.publish("lepton/v1/dev/dev-a/cmd", b"for a", qos=1).wait_for_publish(5)
    ctl.publish("homeassistant/device/lepton_dev-a/config", b"{}", qos=1).wait_for_publish(5)
    a.publish("homeassistant/device/evil/config", b"{}", qos=1).wait_for_publish(5)
    ha.publish("lepton/v1/dev/dev-a/cmd", b"from ha", qos=1).wait_for_publish(5)
    wait_for(lambda: ("homeassistant/device/lepton_dev-a/config", b"{}") in ha_seen, 5)
    wait_for(lambda: ("lepton/v1/dev/dev-a/telemetry", b"own") in ha_seen, 5)
    wait_for(lambda: ("lepton/v1/dev/dev-a/telemetry", b"own") in seen, 5)
    wait_for(lambda: ("lepton/v1/dev/dev-a/cmd", b"for a") in a_seen, 5)
    time.sleep(0.5)
    assert ("lepton/v1/dev/dev-b/telemetry", b"spoofed") not in seen
    assert ("lepton/v1/dev/dev-b/cmd", b"for b") not in a_seen
    assert ("homeassistant/device/evil/config", b"{}") not in ha_seen  # devices may not announce
    assert ("lepton/v1/dev/dev-a/cmd", b"from ha") not in a_seen  # Home Assistant only reads
    for c in (a, ctl, ha):
        c.disconnect()
        c.loop_stop()
