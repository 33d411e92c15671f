"""Scale-out: two `lepton-controller serve` processes against one PostgreSQL and one mosquitto.

They share telemetry through an MQTT v5 shared subscription (each message is ingested by exactly
one of them), elect one leader with a PostgreSQL advisory lock, and when the leader is killed
with SIGKILL mid-rollout the other one finishes the rollout, deploying no device twice.

Both controllers use one state directory (signing key, bundles, artifacts): in production a
shared volume, as in deploy/scale-out/compose.yaml.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from lepton_edge.agent.config import AgentSettings
from lepton_edge.agent.service import Agent
from lepton_edge.controller.bundles import pack
from lepton_edge.controller.db import Database
from lepton_edge.controller.tables import CommandRecord, TelemetrySample
from lepton_edge.shared import topics
from lepton_edge.shared.messages import CpuSample, MemorySample, Telemetry, decode, encode
from lepton_edge.shared.signing import load_private_key, public_pem
from lepton_edge.shared.topics import Kind
from tests.controller.helpers import make_bundle
from tests.deploy.support import ControllerProcess
from tests.mosquitto import Mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

GROUP = "controllers"
TELEMETRY_DEVICES = 5
TELEMETRY_PER_DEVICE = 60
AGENTS = 4
SOAK_S = 5.0


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def leading(controller: ControllerProcess) -> bool:
    return bool(controller.wait_healthy()["leader"])


class CommandRecorder:
    """Every command any controller publishes, as the devices receive them."""

    def __init__(self, broker: Mosquitto) -> None:
        self.deploys: dict[str, set[str]] = defaultdict(set)  # device -> deploy command ids
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_connect = lambda c, *_: c.subscribe(topics.subscription(Kind.CMD), qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        device_id, _ = topics.parse(msg.topic)
        command = decode(Kind.CMD, msg.payload)
        if command.type == "deploy":  # type: ignore[union-attr]
            self.deploys[device_id].add(command.command_id)  # type: ignore[union-attr]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def cluster(
    postgres_url: str, mosquitto: Mosquitto, tmp_path: Path
) -> Iterator[tuple[ControllerProcess, ControllerProcess]]:
    settings = {
        "database_url": postgres_url,
        "state_dir": str(tmp_path / "shared-state"),
        "mqtt": {
            "enabled": True,
            "host": mosquitto.host,
            "port": mosquitto.port,
            "shared_subscription_group": GROUP,
        },
        "rollout": {
            "tick_s": 0.3,
            "soak_s": SOAK_S,
            "require_inferring": False,
            "resend_after_s": 3.0,
            "wave_timeout_s": 120.0,
        },
    }
    first = ControllerProcess(tmp_path / "controller-a", settings)
    second = ControllerProcess(tmp_path / "controller-b", settings)
    try:
        # One after the other: the first creates the schema and the signing key.
        first.start()
        wait_until(lambda: leading(first), 20, "the first controller to lead")
        second.start()
        yield first, second
    finally:
        second.stop()
        first.stop()


def publish_telemetry(broker: Mosquitto) -> int:
    """Synthetic devices send numbered telemetry at QoS 1; return how many messages."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = []
    for seq in range(TELEMETRY_PER_DEVICE):
        for n in range(TELEMETRY_DEVICES):
            sample = Telemetry(
                device_id=f"tel-{n}",
                ts=time.time(),
                seq=seq,
                cpu=CpuSample(percent=10.0),
                memory=MemorySample(used_mb=100, available_mb=900, percent=10),
            )
            infos.append(
                client.publish(topics.topic(f"tel-{n}", Kind.TELEMETRY), encode(sample), qos=1)
            )
    for info in infos:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    return len(infos)


def test_two_controllers_share_telemetry_and_fail_over(
    cluster: tuple[ControllerProcess, ControllerProcess],
    mosquitto: Mosquitto,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    first, second = cluster
    controllers = (first, second)
    assert leading(first) and not leading(second)
    db = Database(postgres_url)
    recorder = CommandRecorder(mosquitto)
    agents: list[Agent] = []
    try:
        # --- telemetry: every message ingested exactly once, by one of the two -------------
        wait_until(
            lambda: all(c.metrics().get("lepton_mqtt_connected") == 1 for c in controllers),
            20,
            "both bridges to connect",
        )
        before = [c.metrics().get("lepton_telemetry_ingested_total", 0) for c in controllers]
        sent = publish_telemetry(mosquitto)

        def ingested() -> list[float]:
            return [
                c.metrics().get("lepton_telemetry_ingested_total", 0) - b
                for c, b in zip(controllers, before, strict=True)
            ]

        wait_until(lambda: sum(ingested()) >= sent, 30, f"{sent} telemetry messages")
        time.sleep(1.0)  # a duplicate would arrive now
        shares = ingested()
        assert sum(shares) == sent, shares
        assert all(share > 0 for share in shares), f"one controller took everything: {shares}"
        with db.session() as session:
            rows = session.execute(
                select(TelemetrySample.device_id, TelemetrySample.seq, func.count())
                .where(TelemetrySample.device_id.like("tel-%"))
                .group_by(TelemetrySample.device_id, TelemetrySample.seq)
            ).all()
        assert len(rows) == sent and all(count == 1 for _, _, count in rows)

        # --- a rollout driven by the leader only -------------------------------------------
        state = tmp_path / "shared-state"
        key = load_private_key((state / "keys/signing.pem").read_bytes())
        pinned = tmp_path / "controller.pem"
        pinned.write_bytes(public_pem(key.public_key()))
        manifest = make_bundle(tmp_path / "bundle", key, bundle_id="scale-1")
        upload = second.api("POST", "/bundles", content=pack(tmp_path / "bundle"))
        assert upload.status_code == 201, upload.text

        for n in range(AGENTS):
            settings = AgentSettings(
                device_id=f"box-{n}",
                state_dir=tmp_path / f"agent-{n}",
                controller_key_file=pinned,
                telemetry_interval_s=0.5,
                mqtt={"host": mosquitto.host, "port": mosquitto.port},
            )
            agent = Agent(settings)
            agent.start()
            agents.append(agent)
        assert all(agent.wait_ready(20) for agent in agents)

        def known_online() -> bool:
            reply = second.api("GET", "/devices", params={"online": "true"})
            ids = {d["id"] for d in reply.json()}
            return {f"box-{n}" for n in range(AGENTS)} <= ids

        wait_until(known_online, 20, "the agents' births")
        created = second.api(  # any controller takes the request; the leader carries it out
            "POST",
            "/rollouts",
            json={
                "bundle_id": manifest.bundle_id,
                "target": {"device_ids": [f"box-{n}" for n in range(AGENTS)]},
                "waves": [25, 50, 100],
            },
        )
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]

        def rollout() -> dict[str, Any]:
            reply = second.api("GET", f"/rollouts/{rollout_id}")
            assert reply.status_code == 200, reply.text
            return dict(reply.json())

        wait_until(
            lambda: rollout()["waves"][0]["states"].get("healthy") == 1, 60, "wave 1 healthy"
        )
        # Only the leader has sent commands so far.
        assert second.metrics().get("lepton_commands_published_total", 0) == 0
        assert first.metrics().get("lepton_commands_published_total", 0) >= 1

        # --- the leader dies in the soak time; the other takes the lock and finishes -------
        first.kill()
        wait_until(lambda: leading(second), 20, "the second controller to take over")
        wait_until(lambda: rollout()["state"] == "completed", 90, "the rollout to complete")

        final = rollout()
        assert all(d["state"] == "healthy" for d in final["devices"]), final["devices"]
        assert second.metrics().get("lepton_commands_published_total", 0) >= 1
        assert all(agent.active and agent.active.bundle_id == "scale-1" for agent in agents)
        # No device was deployed twice: one deploy command per device, in the database and
        # on the wire (a resend would reuse the id).
        with db.session() as session:
            per_device = dict(
                session.execute(
                    select(CommandRecord.device_id, func.count())
                    .where(CommandRecord.type == "deploy")
                    .group_by(CommandRecord.device_id)
                ).all()
            )
        assert per_device == {f"box-{n}": 1 for n in range(AGENTS)}
        assert {d: len(ids) for d, ids in recorder.deploys.items()} == per_device
        time.sleep(1.0)
        assert rollout()["finished_at"] == final["finished_at"]  # completed once, stays so
    finally:
        for agent in agents:
            agent.stop(flush_timeout=1.0)
        recorder.close()
        db.close()
