"""The MQTT bridge against a real mosquitto: registry updates, gaps, duplicates, bad payloads."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from lepton_edge.controller.app import create_app
from lepton_edge.shared import messages, topics
from lepton_edge.shared.messages import CpuSample, Event, EventKind, MemorySample, State, Telemetry
from lepton_edge.shared.topics import Kind
from tests.controller.conftest import AUTH, make_settings
from tests.controller.helpers import SimAgent, profile, wait_for


def _publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _tel(device_id: str, seq: int) -> bytes:
    return messages.encode(
        Telemetry(
            device_id=device_id,
            ts=time.time(),
            seq=seq,
            cpu=CpuSample(percent=5),
            memory=MemorySample(used_mb=1, available_mb=2, percent=3),
        )
    )


def test_registry_gaps_duplicates_and_rejects(tmp_path, db_url, mosquitto) -> None:
    settings = make_settings(
        tmp_path, db_url, mosquitto, ingest={"history_per_device": 5, "prune_interval_s": 0.1}
    )
    with TestClient(create_app(settings)) as client:
        ctl = client.app.state.controller
        assert ctl.bridge.wait_connected()
        pub = _publisher(mosquitto.port)
        state = State(
            device_id="d1", ts=time.time(), status="online", hardware=profile(), agent_version="1"
        )
        pub.publish(topics.topic("d1", Kind.STATE), messages.encode(state), 1, retain=True)
        for seq in [0, 1, 2, 2, 5, 6, 7, 8, 9, 10]:  # one duplicate, a gap of two
            pub.publish(topics.topic("d1", Kind.TELEMETRY), _tel("d1", seq), 1).wait_for_publish()
        ev = Event(
            device_id="d1",
            ts=time.time(),
            seq=0,
            kind=EventKind.PRECISION_SWITCH,
            reason="battery 19 %",
        )
        pub.publish(topics.topic("d1", Kind.EVENT), messages.encode(ev), 1)
        # bad input: not JSON, wrong schema, oversized, device id not matching the topic, bad topic
        pub.publish(topics.topic("d1", Kind.TELEMETRY), b"{not json", 1)
        pub.publish(topics.topic("d1", Kind.TELEMETRY), json.dumps({"device_id": "d1"}), 1)
        pub.publish(topics.topic("d1", Kind.TELEMETRY), b"x" * (messages.MAX_PAYLOAD_BYTES + 1), 1)
        pub.publish(topics.topic("d2", Kind.TELEMETRY), _tel("d1", 11), 1)
        pub.publish("lepton/v1/dev/d1/bogus/extra", b"{}", 1)
        pub.publish("lepton/v1/dev/d1/telemetry", b"\xff\xfe", 1).wait_for_publish()

        counters = ctl.bridge.counters
        wait_for(
            lambda: (
                counters.rejected_malformed >= 3
                and counters.rejected_oversized == 1
                and counters.rejected_topic >= 1
                and counters.telemetry >= 8
            ),
            what="ingestion",
        )
        assert counters.rejected_malformed == 3
        assert counters.rejected_topic == 1  # the bogus topic is outside our subscription
        wait_for(lambda: client.get("/api/v1/devices/d1", headers=AUTH).json()["gaps"] == 2)
        detail = client.get("/api/v1/devices/d1", headers=AUTH).json()
        assert detail["online"] is True and detail["duplicates"] == 1
        assert detail["telemetry_count"] == 9 and detail["last_telemetry"]["seq"] == 10
        assert detail["hardware_class"] == profile().hardware_class()
        assert detail["events"][0]["kind"] == "precision_switch"
        wait_for(
            lambda: len(client.get("/api/v1/devices/d1", headers=AUTH).json()["history"]) == 5,
            what="history pruned to 5",
        )
        metrics = client.get("/metrics").text
        assert 'lepton_mqtt_rejected_total{reason="malformed"} 3' in metrics
        assert "lepton_telemetry_gaps_total 2" in metrics
        pub.loop_stop()
        pub.disconnect()


def test_online_offline_from_birth_and_will_and_filters(tmp_path, db_url, mosquitto) -> None:
    settings = make_settings(tmp_path, db_url, mosquitto)
    with TestClient(create_app(settings)) as client:
        assert client.app.state.controller.bridge.wait_connected()
        a = SimAgent(
            "arm-1",
            mosquitto.port,
            hw=profile(cpu_model="Cortex-A76", arch="aarch64", features=["neon", "asimddp"]),
        ).start()
        b = SimAgent("x86-1", mosquitto.port).start()
        try:
            wait_for(
                lambda: len(client.get("/api/v1/devices?online=true", headers=AUTH).json()) == 2
            )
            assert [
                d["id"] for d in client.get("/api/v1/devices?arch=aarch64", headers=AUTH).json()
            ] == ["arm-1"]
            r = client.put(
                "/api/v1/devices/arm-1/tags", json={"tags": ["lab", "arm"]}, headers=AUTH
            )
            assert r.status_code == 200 and r.json()["tags"] == ["arm", "lab"]
            assert (
                client.put(
                    "/api/v1/devices/arm-1/tags", json={"tags": ["bad tag!"]}, headers=AUTH
                ).status_code
                == 422
            )
            assert (
                client.put("/api/v1/devices/nope/tags", json={"tags": []}, headers=AUTH).status_code
                == 404
            )
            assert [
                d["id"] for d in client.get("/api/v1/devices?tag=lab", headers=AUTH).json()
            ] == ["arm-1"]
            a.stop(clean=False)  # the broker publishes the will
            wait_for(
                lambda: client.get("/api/v1/devices/arm-1", headers=AUTH).json()["online"] is False,
                what="will -> offline",
            )
            assert [
                d["id"] for d in client.get("/api/v1/devices?online=true", headers=AUTH).json()
            ] == ["x86-1"]
            assert "lepton_devices_online 1" in client.get("/metrics").text
        finally:
            b.stop()


def test_shared_subscription_splits_telemetry_between_controllers(
    tmp_path, db_url, mosquitto
) -> None:
    from lepton_edge.controller.bridge import Bridge
    from lepton_edge.controller.db import Database
    from lepton_edge.controller.fleet import Fleet

    settings = make_settings(tmp_path, db_url, mosquitto, mqtt={"shared_subscription_group": "ctl"})
    db = Database(settings.db_url())
    db.migrate()
    replicas = [settings.model_copy(update={"state_dir": tmp_path / f"r{i}"}) for i in range(2)]
    bridges = [Bridge(r, db, Fleet(shared=True)) for r in replicas]
    assert bridges[0].client._client_id != bridges[1].client._client_id
    for b in bridges:
        b.start()
        assert b.wait_connected()
    time.sleep(0.3)
    pub = _publisher(mosquitto.port)
    for seq in range(100):
        for d in ("s1", "s2"):
            pub.publish(topics.topic(d, Kind.TELEMETRY), _tel(d, seq), 1)
    pub.publish(topics.topic("s1", Kind.TELEMETRY), _tel("s1", 100), 1).wait_for_publish()
    wait_for(lambda: sum(b.counters.telemetry for b in bridges) == 201, what="all telemetry")
    assert all(b.counters.telemetry > 0 for b in bridges)  # both took a share
    for b in bridges:
        b.stop()
    with db.session() as s:
        from lepton_edge.controller.tables import Device

        assert sum(d.telemetry_count for d in s.query(Device)) == 201
    db.close()
    pub.loop_stop()
    pub.disconnect()


def test_a_failed_write_is_retried_and_a_bad_benchmark_result_loses_nothing(
    tmp_path, db_url
) -> None:
    from lepton_edge.controller import commands
    from lepton_edge.controller.bridge import Bridge, Received
    from lepton_edge.controller.db import Database
    from lepton_edge.controller.tables import CommandRecord, Device
    from lepton_edge.shared.messages import Benchmark, Reply

    settings = make_settings(tmp_path, db_url)
    db = Database(settings.db_url())
    db.migrate()
    bridge = Bridge(settings, db)
    cmd = Benchmark(
        command_id="bench-1",
        ts=0,
        bundle_id="b",
        manifest_url="u",
        artifact_base_url="u",
        variant_ids=["v"],
    )
    with db.session() as s:
        commands.record(s, "d1", cmd, None, 0)
    real_apply, calls = bridge.fleet.apply, []

    def flaky_apply(session, batch):  # type: ignore[no-untyped-def]
        result = real_apply(session, batch)  # caches move ahead ...
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database went away")  # ... and the transaction rolls back
        return result

    bridge.fleet.apply = flaky_apply  # type: ignore[method-assign]
    reply = Reply(device_id="d1", ts=0, command_id="bench-1", status="done", result={"bogus": 1})
    bridge._queue.extend(
        [
            Received(topics.topic("d1", Kind.TELEMETRY), _tel("d1", 5), 1, 0, 0),
            Received(topics.topic("d1", Kind.REPLY), messages.encode(reply), 2, 0, 0),
        ]
    )
    bridge._flush()
    assert len(calls) == 2 and bridge.counters.write_errors == 0
    assert bridge.counters.telemetry == 1 and bridge.counters.duplicates == 0
    with db.session() as s:
        assert s.get(Device, "d1").telemetry_count == 1  # type: ignore[union-attr]
        assert s.get(CommandRecord, "bench-1").status == "done"  # type: ignore[union-attr]
    db.close()
