"""Home Assistant MQTT discovery against a real mosquitto, a real controller and a real agent
process that infers: a subscriber on the discovery prefix checks every config message against
Home Assistant's schema, renders each template (Jinja2, as Home Assistant does) on the
device's real messages, sees availability follow a `kill -9`, and sees the entities go when the
device is removed."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from fastapi.testclient import TestClient

from lepton_edge.controller.app import create_app
from lepton_edge.controller.homeassistant import Discovery, config_topic, slug
from lepton_edge.shared.messages import InferenceResult
from lepton_edge.shared.topics import Kind, topic
from tests.agent.agent_support import (
    ArtifactServer,
    Watcher,
    start_agent_process,
    stop_process,
    write_key,
)
from tests.agent.test_agent_inference import KEY, MODEL, deploy, onnx_bundle
from tests.controller.conftest import AUTH, make_settings
from tests.controller.helpers import wait_for
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.slow

DEVICE = "cam.1"  # a '.' Home Assistant's ids do not allow: slugged
PREFIX = "homeassistant"

# Home Assistant's MQTT discovery schema, the parts this product uses.
DEVICE_KEYS = {
    "identifiers", "connections", "name", "manufacturer", "model", "model_id", "hw_version",
    "sw_version", "serial_number", "suggested_area", "via_device", "configuration_url",
}  # fmt: skip
SENSOR_KEYS = {
    "platform", "name", "unique_id", "default_entity_id", "state_topic", "value_template",
    "device_class", "unit_of_measurement", "state_class", "entity_category", "options",
    "icon", "expire_after", "force_update", "suggested_display_precision",
}  # fmt: skip
UNITS = {
    "battery": {"%"},
    "temperature": {"°C", "°F", "K"},
    "duration": {"d", "h", "min", "s", "ms"},
}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
OBJECT_ID = re.compile(r"^[A-Za-z0-9_-]+$")

ENV = jinja2.Environment(undefined=jinja2.StrictUndefined)


def render(template: str, payload: bytes) -> str:
    """A value template as Home Assistant renders it on a received payload."""
    return ENV.from_string(template).render(value_json=json.loads(payload), value=payload.decode())


def validate(topic_name: str, config: dict[str, Any]) -> None:
    """Every field of one device-discovery config, as Home Assistant would check it."""
    node = topic_name.split("/")[2]
    assert topic_name == f"{PREFIX}/device/{node}/config" and OBJECT_ID.match(node)
    assert set(config) <= {"device", "origin", "availability", "qos", "components"}
    device = config["device"]
    assert set(device) <= DEVICE_KEYS and device["identifiers"] == [node]
    assert device["name"] == DEVICE and device["manufacturer"] == "lepton-edge"
    assert device["via_device"] == "lepton_controller_lepton"
    assert device["model"] and device["sw_version"] and device["hw_version"]
    assert config["origin"]["name"] == "lepton-edge" and config["qos"] in (0, 1, 2)
    (availability,) = config["availability"]
    assert availability["topic"] == topic(DEVICE, Kind.STATE)
    assert (availability["payload_available"], availability["payload_not_available"]) == (
        "online",
        "offline",
    )
    for object_id, c in config["components"].items():
        assert OBJECT_ID.match(object_id) and object_id.startswith(node)
        assert set(c) <= SENSOR_KEYS and c["platform"] == "sensor"
        assert c["unique_id"] == object_id and c["default_entity_id"] == f"sensor.{object_id}"
        assert c["state_topic"] in (topic(DEVICE, Kind.TELEMETRY), topic(DEVICE, Kind.RESULT))
        assert not c["name"].startswith(DEVICE)  # Home Assistant prefixes the device name
        kind = c.get("device_class")
        if kind == "enum":
            assert c["options"] and "unit_of_measurement" not in c and "state_class" not in c
        elif kind is not None:
            assert c.get("unit_of_measurement") in UNITS[kind], (object_id, c)
        assert c.get("state_class", "measurement") in STATE_CLASSES
        assert c.get("entity_category", "diagnostic") == "diagnostic"
        ENV.parse(c["value_template"])


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as srv:
        yield srv


def agent_config(tmp_path: Path, broker: Mosquitto) -> Path:
    key = write_key(tmp_path / "controller.pem", KEY)
    path = tmp_path / "agent.toml"
    path.write_text(
        f'device_id = "{DEVICE}"\nstate_dir = "{tmp_path / "agent"}"\n'
        f'controller_key_file = "{key}"\ntelemetry_interval_s = 0.3\n'
        f"[mqtt]\nport = {broker.port}\nreconnect_min_s = 0.1\n"
        f'[probes]\nsysfs_root = "{tmp_path / "no-sysfs"}"\nbattery = "simulated"\n'
        'thermal = "simulated"\n'
        '[engine]\nsource = "synthetic"\nfps = 20\nthreads = 1\n'
        "[simulate.battery]\nstart_percent = 80\n[simulate.thermal]\n"
    )
    return path


def test_devices_appear_in_home_assistant_and_leave_with_their_availability(
    tmp_path: Path, mosquitto: Mosquitto, server: ArtifactServer
) -> None:
    onnx_bundle(tmp_path / "bundle", "fm", MODEL.read_bytes())
    server.add_bundle(tmp_path / "bundle")
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'c.db'}", mosquitto, homeassistant={"discovery": True}
    )
    home_assistant = Watcher(mosquitto.port, topic="#")
    config_at = config_topic(PREFIX, DEVICE)
    assert config_at == f"{PREFIX}/device/lepton_{slug(DEVICE)}/config"

    def latest(topic_name: str) -> bytes | None:
        found = [p for t, p, _ in home_assistant.messages if t == topic_name]
        return found[-1] if found else None

    def config() -> dict[str, Any]:
        payload = latest(config_at)
        return json.loads(payload) if payload else {}

    proc = start_agent_process(agent_config(tmp_path, mosquitto), log_file=tmp_path / "agent.log")
    try:
        with TestClient(create_app(settings)) as client:
            home_assistant.wait_json("/state", lambda m: m["status"] == "online", 30)
            home_assistant.publish(topic(DEVICE, Kind.CMD), deploy(server, "fm", "c1"))
            node = f"lepton_{slug(DEVICE)}"
            wanted = {"battery", "temperature", "top_label", "fps", "precision", "cpu"}
            wait_for(
                lambda: (
                    wanted <= {k.removeprefix(f"{node}_") for k in config().get("components", {})}
                ),
                60,
                what="battery, temperature and results announced",
            )
            home_assistant.wait_json(
                "/telemetry", lambda m: (m.get("inference") or {}).get("frames", 0) > 0, 30
            )
            configs = [(t, p) for t, p, _ in home_assistant.messages if t.startswith(PREFIX)]
            for topic_name, payload in configs:
                validate(topic_name, json.loads(payload))
            # retained: a Home Assistant that starts later finds the device too
            later = Watcher(mosquitto.port, topic=f"{PREFIX}/#")
            try:
                assert later.wait_for(lambda m: any(t == config_at and r for t, _, r in m), 10)
            finally:
                later.close()

            # Each sensor's template, rendered on the device's newest real message, gives the
            # figure that message carries.
            announced = config()
            sensors = {k.removeprefix(f"{node}_"): c for k, c in announced["components"].items()}
            telemetry_payload = latest(topic(DEVICE, Kind.TELEMETRY))
            result_payload = latest(topic(DEVICE, Kind.RESULT))
            assert telemetry_payload is not None and result_payload is not None
            t = json.loads(telemetry_payload)
            got = {
                key: render(c["value_template"], telemetry_payload)
                for key, c in sensors.items()
                if c["state_topic"].endswith("/telemetry")
            }
            assert float(got["battery"]) == t["battery"]["percent"]
            assert float(got["temperature"]) == t["thermal"]["max_c"]
            assert float(got["cpu"]) == t["cpu"]["percent"]
            assert got["power_level"] == t["power_level"]
            assert got["power_level"] in sensors["power_level"]["options"]
            assert got["variant"] == "onnx-fp32"
            if t["inference"] is not None:
                assert got["precision"] == "fp32"
                assert float(got["latency_p99"]) == t["inference"]["latency_p99_ms"]
            result = InferenceResult.model_validate_json(result_payload)
            assert result.top is not None
            label = render(sensors["top_label"]["value_template"], result_payload)
            assert label == result.top[0].label
            availability = announced["availability"][0]
            state = latest(topic(DEVICE, Kind.STATE))
            assert state is not None
            assert render(availability["value_template"], state) == "online"

            # kill -9: the broker publishes the will; the availability template reads offline.
            proc.kill()
            proc.wait(10)

            def availability_now() -> str | None:
                state = latest(topic(DEVICE, Kind.STATE))
                return render(availability["value_template"], state) if state else None

            wait_for(
                lambda: availability_now() == availability["payload_not_available"],
                30,
                what="availability offline after kill -9",
            )

            # Removing the device takes its entities (and its retained state) away. (Removed
            # while its will is still on the way, the will would register it again.)
            wait_for(
                lambda: (
                    client.get(f"/api/v1/devices/{DEVICE}", headers=AUTH).json()["online"] is False
                ),
                what="the controller to see the will",
            )
            assert client.delete(f"/api/v1/devices/{DEVICE}", headers=AUTH).status_code == 204
            wait_for(lambda: latest(config_at) == b"", 10, what="an empty retained config")
            assert client.delete(f"/api/v1/devices/{DEVICE}", headers=AUTH).status_code == 404
    finally:
        stop_process(proc)
        home_assistant.close()
    # A Home Assistant that connects now finds nothing retained for the device.
    late = Watcher(mosquitto.port, topic="#")
    time.sleep(1.0)
    late.close()
    left = [
        t
        for t, _, retained in late.messages
        if retained and (t == config_at or t.startswith(f"lepton/v1/dev/{DEVICE}/"))
    ]
    assert left == []


def test_ids_home_assistant_rejects_are_slugged_consistently() -> None:
    assert slug("cam-1") == "cam-1" and slug("cam_1") == "cam_1"
    assert slug("cam.1") == slug("cam.1") and OBJECT_ID.match(slug("cam.1"))
    assert slug("cam.1") != slug("cam_1") and slug("cam.1") != slug("cam:1")


def test_nothing_is_announced_before_a_birth_and_nothing_twice() -> None:
    from lepton_edge.shared.messages import CpuSample, MemorySample, State, Telemetry
    from tests.controller.helpers import profile

    sent: list[tuple[str, bytes]] = []
    discovery = Discovery(PREFIX, "lepton", lambda t, p: sent.append((t, p)))
    sample = Telemetry(
        device_id="d1",
        ts=1.0,
        seq=0,
        cpu=CpuSample(percent=5),
        memory=MemorySample(used_mb=1, available_mb=1, percent=50),
    )
    discovery.saw(sample)
    discovery.saw(State(device_id="d1", ts=1.0, status="offline"))  # e.g. a will in flight
    assert sent == []  # no birth yet: announced with the birth
    discovery.saw(State(device_id="d1", ts=1.0, status="online", hardware=profile()))
    discovery.saw(sample)
    discovery.saw(sample)
    assert len(sent) == 1
    components = json.loads(sent[0][1])["components"]
    assert "lepton_d1_battery" not in components  # no battery reported: no battery sensor
    discovery.forget("d1")
    assert sent[-1] == (config_topic(PREFIX, "d1"), b"")
