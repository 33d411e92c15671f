"""Home Assistant MQTT discovery: every device appears in Home Assistant with its sensors and no
configuration, as Frigate, zigbee2mqtt and ESPHome devices do.

The controller announces, not the agent: it sees the whole fleet, so it can take a removed
device's entities away; it names itself as each device's `via_device`; and devices keep a broker
ACL confined to their own subtree. One retained device-discovery message per device
(`<prefix>/device/<node>/config`, Home Assistant 2024.11+) carries the device and its sensors;
the sensors read the device's own `telemetry` and `result` topics, and availability follows its
retained `state`, which the broker turns `offline` with the will when a box dies.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lepton_edge.shared import __version__, topics
from lepton_edge.shared.messages import InferenceResult, PowerLevel, State, Telemetry
from lepton_edge.shared.topics import Kind

#: What Home Assistant accepts in a node id and a component's object id.
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")


def slug(device_id: str) -> str:
    """`device_id` as Home Assistant's ids allow; an id that had to change gets a short hash of
    the original, so `cam.1` and `cam_1` stay two devices (the same id always gives the same
    slug)."""
    cleaned = _NOT_ALLOWED.sub("_", device_id)
    if cleaned == device_id:
        return device_id
    return f"{cleaned}_{hashlib.sha256(device_id.encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class Sensor:
    """One Home Assistant sensor, read from one of the device's topics."""

    key: str
    name: str
    kind: Kind
    value_template: str
    device_class: str | None = None
    unit: str | None = None
    state_class: str | None = "measurement"
    entity_category: str | None = None
    options: tuple[str, ...] | None = None
    #: whether a device shows it (e.g. only boxes with a battery get a battery sensor)
    shown: Callable[[Seen], bool] = lambda _seen: True


def _or_none(path: str, guard: str) -> str:
    # A missing part renders "None", which Home Assistant's MQTT sensor takes as unknown.
    return f"{{{{ {path} if {guard} is not none else None }}}}"


SENSORS: tuple[Sensor, ...] = (
    Sensor(
        "battery",
        "Battery",
        Kind.TELEMETRY,
        _or_none("value_json.battery.percent", "value_json.battery"),
        device_class="battery",
        unit="%",
        shown=lambda s: s.battery,
    ),
    Sensor(
        "power_level",
        "Power level",
        Kind.TELEMETRY,
        _or_none("value_json.power_level", "value_json.power_level"),
        device_class="enum",
        state_class=None,
        options=tuple(level.value for level in PowerLevel),
    ),
    Sensor(
        "variant",
        "Active variant",
        Kind.TELEMETRY,
        _or_none("value_json.active_variant", "value_json.active_variant"),
        state_class=None,
    ),
    Sensor(
        "precision",
        "Precision",
        Kind.TELEMETRY,
        _or_none("value_json.inference.precision", "value_json.inference"),
        state_class=None,
    ),
    Sensor(
        "fps",
        "Inference rate",
        Kind.TELEMETRY,
        _or_none("value_json.inference.fps | round(2)", "value_json.inference"),
        unit="fps",
    ),
    Sensor(
        "latency_p99",
        "Latency p99",
        Kind.TELEMETRY,
        _or_none("value_json.inference.latency_p99_ms", "value_json.inference"),
        device_class="duration",
        unit="ms",
    ),
    Sensor(
        "cpu",
        "CPU",
        Kind.TELEMETRY,
        "{{ value_json.cpu.percent }}",
        unit="%",
        entity_category="diagnostic",
    ),
    Sensor(
        "temperature",
        "Temperature",
        Kind.TELEMETRY,
        _or_none("value_json.thermal.max_c", "value_json.thermal"),
        device_class="temperature",
        unit="°C",
        shown=lambda s: s.thermal,
    ),
    Sensor(
        "accuracy",
        "Accuracy",
        Kind.TELEMETRY,
        "{{ (value_json.inference.accuracy * 100) | round(2) if value_json.inference is not none "
        "and value_json.inference.accuracy is not none else None }}",
        unit="%",
        shown=lambda s: s.accuracy,
    ),
    Sensor(
        "top_label",
        "Top label",
        Kind.RESULT,
        "{{ value_json.top[0].label if value_json.top else None }}",
        state_class=None,
        shown=lambda s: s.labels,
    ),
    Sensor(
        "objects",
        "Objects detected",
        Kind.RESULT,
        "{{ value_json.detections | length if value_json.detections is not none else None }}",
        shown=lambda s: s.detections,
    ),
)


@dataclass
class Seen:
    """What a device has shown so far: a sensor appears once its data does, and stays."""

    state: State | None = None
    battery: bool = False
    thermal: bool = False
    accuracy: bool = False
    labels: bool = False
    detections: bool = False

    def add(self, message: State | Telemetry | InferenceResult) -> bool:
        """Take in one message; whether the announcement may have changed."""
        before = (self.battery, self.thermal, self.accuracy, self.labels, self.detections)
        if isinstance(message, State):
            # Only a birth announces: an offline will carries no profile, and one that arrives
            # after the device was removed must not bring its entities back.
            if message.status == "online":
                self.state = message
                return True
        elif isinstance(message, Telemetry):
            self.battery |= message.battery is not None
            self.thermal |= message.thermal is not None
            inference = message.inference
            self.accuracy |= inference is not None and inference.accuracy is not None
        else:
            self.labels |= message.top is not None
            self.detections |= message.detections is not None
        return before != (self.battery, self.thermal, self.accuracy, self.labels, self.detections)


def config_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/device/lepton_{slug(device_id)}/config"


def device_config(device_id: str, seen: Seen, controller_id: str) -> dict[str, Any]:
    """The device-discovery payload: the device, where availability comes from, its sensors."""
    node = f"lepton_{slug(device_id)}"
    state = seen.state
    hardware = state.hardware if state is not None else None
    device: dict[str, Any] = {
        "identifiers": [node],
        "name": device_id,
        "manufacturer": "lepton-edge",
        "via_device": f"lepton_controller_{slug(controller_id)}",
    }
    if hardware is not None:
        device["model"] = hardware.hardware_class()
        device["hw_version"] = f"{hardware.cpu_model} ({hardware.arch}, {hardware.cores} cores)"
    version = (state.agent_version if state is not None else None) or (
        hardware.agent_version if hardware is not None else None
    )
    if version:
        device["sw_version"] = version
    components: dict[str, dict[str, Any]] = {}
    for sensor in SENSORS:
        if not sensor.shown(seen):
            continue
        object_id = f"{node}_{sensor.key}"
        component: dict[str, Any] = {
            "platform": "sensor",
            "name": sensor.name,
            "unique_id": object_id,
            "default_entity_id": f"sensor.{object_id}",
            "state_topic": topics.topic(device_id, sensor.kind),
            "value_template": sensor.value_template,
        }
        for field, value in (
            ("device_class", sensor.device_class),
            ("unit_of_measurement", sensor.unit),
            ("state_class", sensor.state_class),
            ("entity_category", sensor.entity_category),
            ("options", list(sensor.options) if sensor.options else None),
        ):
            if value is not None:
                component[field] = value
        components[object_id] = component
    return {
        "device": device,
        "origin": {"name": "lepton-edge", "sw_version": __version__},
        "availability": [
            {
                "topic": topics.topic(device_id, Kind.STATE),
                "value_template": "{{ value_json.status }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ],
        "qos": 1,
        "components": components,
    }


Publish = Callable[[str, bytes], None]


class Discovery:
    """Announces devices as they show themselves; publishes only what changed."""

    def __init__(self, prefix: str, controller_id: str, publish: Publish) -> None:
        self.prefix = prefix.rstrip("/")
        self.controller_id = controller_id
        self.publish = publish  # (topic, payload) -> retained, QoS 1
        self._seen: dict[str, Seen] = {}
        self._sent: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def saw(self, message: State | Telemetry | InferenceResult) -> None:
        """Called for every decoded message; cheap when nothing new shows."""
        device_id = message.device_id
        with self._lock:
            seen = self._seen.setdefault(device_id, Seen())
            if not seen.add(message) and device_id in self._sent:
                return
            if seen.state is None:
                return  # announced with its birth (retained, so it comes first after a restart)
            payload = json.dumps(
                device_config(device_id, seen, self.controller_id), separators=(",", ":")
            ).encode()
            if self._sent.get(device_id) == payload:
                return
            self._sent[device_id] = payload
        self.publish(config_topic(self.prefix, device_id), payload)

    def forget(self, device_id: str) -> None:
        """Remove the device and its entities from Home Assistant (an empty retained config)."""
        with self._lock:
            self._seen.pop(device_id, None)
            self._sent.pop(device_id, None)
        self.publish(config_topic(self.prefix, device_id), b"")
