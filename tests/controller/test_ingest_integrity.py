"""Nothing the broker delivered is lost or stored twice: a controller killed mid-stream, one
NaN in a burst, an inflated or restarted sequence, a redelivery, a late arrival."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from lepton_edge.controller.db import Database
from lepton_edge.controller.fleet import Batch, Fleet
from lepton_edge.controller.tables import Device, EventRecord, TelemetrySample
from lepton_edge.shared import messages, topics
from lepton_edge.shared.messages import CpuSample, Event, EventKind, MemorySample, Telemetry
from lepton_edge.shared.topics import Kind
from tests.controller.helpers import wait_for
from tests.controller.test_restart import _serve
from tests.mosquitto import Mosquitto, free_port


def _sample(device_id: str, seq: int, epoch: str | None = "e1") -> Telemetry:
    return Telemetry(
        device_id=device_id,
        ts=time.time(),
        seq=seq,
        epoch=epoch,
        cpu=CpuSample(percent=5),
        memory=MemorySample(used_mb=1, available_mb=2, percent=3),
    )


def _apply(db: Database, fleet: Fleet, samples: list[Telemetry]) -> None:
    with db.session() as session:
        fleet.apply(session, Batch(telemetry=[(s, messages.encode(s).decode()) for s in samples]))


def _stored(db: Database, device_id: str) -> list[tuple[str | None, int]]:
    with db.session() as session:
        rows = session.execute(
            select(TelemetrySample.epoch, TelemetrySample.seq)
            .where(TelemetrySample.device_id == device_id)
            .order_by(TelemetrySample.id)
        )
        return [(e, s) for e, s in rows]


def _device(db: Database, device_id: str) -> Device:
    with db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        session.expunge(device)
        return device


def test_sequences_jumps_resets_redeliveries_and_late_arrivals(tmp_path: Path, db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    fleet = Fleet(max_seq_jump=1000)
    # One inflated seq does not silence the device: its genuine samples go on being stored.
    _apply(db, fleet, [_sample("d1", s) for s in range(5)])
    _apply(db, fleet, [_sample("d1", 10**12)])
    _apply(db, fleet, [_sample("d1", 5), _sample("d1", 6)])
    d1 = _device(db, "d1")
    assert [s for _, s in _stored(db, "d1")] == [0, 1, 2, 3, 4, 10**12, 5, 6]
    assert (d1.last_seq, d1.suspect_seqs, d1.duplicates, d1.gaps) == (6, 1, 0, 0)
    # A jump the next sample goes on from is real (a long outage): a gap, not a freeze.
    _apply(db, fleet, [_sample("d1", 5000), _sample("d1", 5001), _sample("d1", 5002)])
    d1 = _device(db, "d1")
    assert (d1.last_seq, d1.suspect_seqs, d1.gaps) == (5002, 2, len(range(7, 5000)))

    # A new epoch is a restart from 0 (a new state dir), not a duplicate of seq 0.
    _apply(db, fleet, [_sample("d2", s) for s in range(3)])
    _apply(db, fleet, [_sample("d2", s, epoch="e2") for s in range(2)])
    d2 = _device(db, "d2")
    assert (d2.resets, d2.duplicates, d2.telemetry_count, d2.seq_epoch) == (1, 0, 5, "e2")

    # A redelivery is stored once; a late arrival fills its gap; both in one batch.
    _apply(db, fleet, [_sample("d3", s) for s in (0, 1, 3, 4)])
    _apply(db, fleet, [_sample("d3", 4), _sample("d3", 2), _sample("d3", 2), _sample("d3", 5)])
    assert sorted(s for _, s in _stored(db, "d3")) == [0, 1, 2, 3, 4, 5]
    d3 = _device(db, "d3")
    assert (d3.duplicates, d3.gaps, d3.telemetry_count, d3.last_seq) == (2, 1, 6, 5)

    # A controller restarted with an empty cache reads the sequences back from the database.
    fresh = Fleet(max_seq_jump=1000)
    _apply(db, fresh, [_sample("d3", 5), _sample("d3", 6)])
    assert sorted(s for _, s in _stored(db, "d3")) == [0, 1, 2, 3, 4, 5, 6]
    assert _device(db, "d3").duplicates == 3
    db.close()


def test_history_is_kept_by_count_and_by_age(tmp_path: Path, db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    fleet = Fleet()
    now = time.time()
    old = [_sample("d1", s).model_copy(update={"ts": now - 7200 + s}) for s in range(5)]
    _apply(db, fleet, [*old, *(_sample("d1", s) for s in range(5, 12))])
    _apply(db, fleet, [_sample("d2", s) for s in range(3)])
    with db.session() as session:  # two hours' history at most: d1's first five go
        assert fleet.prune(session, 10, 100, max_age_s=3600, now=now, limit=1) == 5
    assert fleet.pruning  # one device per slice: d2 is left for the next call
    _apply(db, fleet, [_sample("d3", 0)])  # touched now: for the next round, not this one
    with db.session() as session:
        assert fleet.prune(session, 1, 100, limit=1) == 2
    assert not fleet.pruning
    assert [s for _, s in _stored(db, "d1")] == list(range(5, 12))
    assert [s for _, s in _stored(db, "d2")] == [2]
    _apply(db, fleet, [_sample("d1", 12)])
    events = [
        Event(device_id=d, ts=now, seq=n, kind=EventKind.POLICY, reason=f"event {n}")
        for d in ("d1", "d3")
        for n in range(4)
    ]
    with db.session() as session:
        fleet.apply(session, Batch(events=events))
    with db.session() as session:  # and by count, newest first (a round: d1 and d3)
        assert fleet.prune(session, 3, 2) == 5
    assert [s for _, s in _stored(db, "d1")] == [10, 11, 12]
    assert [s for _, s in _stored(db, "d3")] == [0]
    with db.session() as session:  # events too: each device's newest two
        kept = session.execute(select(EventRecord.device_id, EventRecord.reason))
        assert sorted(kept) == [(d, f"event {n}") for d in ("d1", "d3") for n in (2, 3)]
    db.close()


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_one_nan_is_refused_alone_and_the_rest_of_its_batch_is_stored(
    tmp_path: Path, db_url: str, mosquitto: Mosquitto
) -> None:
    from fastapi.testclient import TestClient

    from lepton_edge.controller.app import create_app
    from tests.controller.conftest import make_settings

    settings = make_settings(tmp_path, db_url, mosquitto, ingest={"flush_interval_ms": 500})
    with TestClient(create_app(settings)) as client:
        ctl = client.app.state.controller
        assert ctl.bridge.wait_connected()
        pub = _publisher(mosquitto.port)
        poisoned = json.loads(messages.encode(_sample("bad", 0)))
        for field, value in (("ts", "NaN"), ("cpu", '{"percent": Infinity}')):
            raw = json.dumps(poisoned).replace(
                f'"{field}": {json.dumps(poisoned[field])}', f'"{field}": {value}'
            )
            assert value in raw
            pub.publish(topics.topic("bad", Kind.TELEMETRY), raw, 1)
        for seq in range(50):  # other devices' samples in the same write batch
            for d in ("g1", "g2"):
                pub.publish(topics.topic(d, Kind.TELEMETRY), messages.encode(_sample(d, seq)), 1)
        pub.publish(
            topics.topic("g1", Kind.TELEMETRY), messages.encode(_sample("g1", 50)), 1
        ).wait_for_publish()
        counters = ctl.bridge.counters
        wait_for(lambda: counters.telemetry >= 101, what="the good samples")
        assert counters.telemetry == 101 and counters.rejected_malformed == 2
        assert counters.write_errors == 0 and counters.ingest_failed == 0
        metrics = client.get("/metrics").text
        assert 'lepton_mqtt_rejected_total{reason="malformed"} 2' in metrics
        pub.loop_stop()
        pub.disconnect()


@pytest.mark.slow
def test_a_controller_killed_mid_stream_loses_no_telemetry(
    tmp_path: Path, db_url: str, mosquitto: Mosquitto
) -> None:
    """kill -9 while 2 devices publish at 50 Hz each; 3 s later it starts again: every seq is
    in the database exactly once (the broker kept the session and what was unacknowledged)."""
    port = free_port()
    keep_all = {"INGEST__HISTORY_PER_DEVICE": "100000"}
    proc = _serve(tmp_path, db_url, mosquitto, port, **keep_all)
    pub = _publisher(mosquitto.port)
    sent: dict[str, int] = {"k1": 0, "k2": 0}
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            for d in sent:
                payload = messages.encode(_sample(d, sent[d]))
                pub.publish(topics.topic(d, Kind.TELEMETRY), payload, 1)
                sent[d] += 1
            time.sleep(0.02)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        time.sleep(2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(3)
        proc = _serve(tmp_path, db_url, mosquitto, port, **keep_all)
        time.sleep(1)
        stop.set()
        thread.join(5)
        db = Database(db_url)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seqs = {d: [s for _, s in _stored(db, d)] for d in sent}
            if all(len(seqs[d]) >= sent[d] for d in sent):
                break
            time.sleep(0.2)
        for d, count in sent.items():
            assert sorted(seqs[d]) == list(range(count)), (d, count, len(seqs[d]))
            assert _device(db, d).gaps == 0
        db.close()
    finally:
        stop.set()
        pub.loop_stop()
        pub.disconnect()
        proc.terminate()
        proc.wait(10)


def test_with_enrollment_on_only_enrolled_devices_are_registered(
    tmp_path: Path, db_url: str, mosquitto: Mosquitto
) -> None:
    from fastapi.testclient import TestClient

    from lepton_edge.controller.app import create_app
    from tests.controller.conftest import AUTH, make_settings

    settings = make_settings(tmp_path, db_url, mosquitto, registration="enrolled")
    with TestClient(create_app(settings)) as client:
        ctl = client.app.state.controller
        assert ctl.bridge.wait_connected()
        token = client.post("/api/v1/tokens", json={"scope": "enroll"}, headers=AUTH).json()
        r = client.post("/api/v1/enroll", json={"token": token["token"], "device_id": "known-1"})
        assert r.status_code == 200, r.text
        pub = _publisher(mosquitto.port)
        for seq in range(3):
            for d in ("known-1", "spoofed-1"):  # an anonymous broker lets anyone publish
                pub.publish(topics.topic(d, Kind.TELEMETRY), messages.encode(_sample(d, seq)), 1)
        pub.publish(
            topics.topic("known-1", Kind.TELEMETRY), messages.encode(_sample("known-1", 3)), 1
        ).wait_for_publish()
        counters = ctl.bridge.counters
        wait_for(lambda: counters.telemetry >= 4 and counters.rejected_unknown >= 3)
        assert (counters.telemetry, counters.rejected_unknown) == (4, 3)
        ids = {d["id"] for d in client.get("/api/v1/devices", headers=AUTH).json()}
        assert ids == {"known-1"}
        metrics = client.get("/metrics").text
        assert 'lepton_mqtt_rejected_total{reason="unknown_device"} 3' in metrics
        pub.loop_stop()
        pub.disconnect()


@pytest.mark.postgres
def test_copy_and_executemany_write_the_same_registry(postgres_url: str) -> None:
    """PostgreSQL's COPY path (the default) against executemany, on the same batches: the
    same samples stored, the same counts and newest sample on every device."""
    db = Database(postgres_url)
    db.migrate()

    def batches(prefix: str) -> list[list[Telemetry]]:
        a, b, c = (f"{prefix}-{n}" for n in "abc")
        return [
            [_sample(a, s) for s in (0, 1, 3)] + [_sample(b, 0), _sample(c, 7, epoch=None)],
            [_sample(a, 2), _sample(a, 3), _sample(a, 4), _sample(b, 1), _sample(b, 1)],
            [_sample(b, 0), _sample(b, 1)],  # only duplicates: b's counts alone change
            [_sample(a, s, epoch="e2") for s in range(2)] + [_sample(c, 8, epoch=None)],
        ]

    columns = ("telemetry_count", "gaps", "duplicates", "resets", "last_seq", "seq_epoch")
    seen = {}
    for copy, prefix in ((True, "copy"), (False, "many")):
        fleet = Fleet(copy=copy)
        for batch in batches(prefix):
            _apply(db, fleet, batch)
        seen[copy] = {
            name: (
                [getattr(device, column) for column in columns],
                device.last_telemetry["seq"] if device.last_telemetry else None,
                _stored(db, device.id),
            )
            for name in "abc"
            for device in [_device(db, f"{prefix}-{name}")]
        }
    assert seen[True] == seen[False]
    assert seen[True]["a"][0] == [7, 1, 1, 1, 1, "e2"]  # 5 + 2: a gap (filled late), a dup, a reset
    assert seen[True]["b"][0][:3] == [2, 0, 3]
    db.close()


@pytest.mark.postgres
def test_replicas_writing_the_same_devices_do_not_deadlock(postgres_url: str) -> None:
    """Two replicas (shared subscriptions) commit batches that touch the same devices in
    opposite orders, at the same time: every batch commits, none is picked as a deadlock
    victim, and every sample is stored once."""
    db = Database(postgres_url)
    db.migrate()
    devices = [f"d{n:02d}" for n in range(40)]
    _apply(db, Fleet(shared=True), [_sample(d, 0) for d in devices])
    errors: list[BaseException] = []

    def replica(order: list[str], first_seq: int) -> None:
        fleet = Fleet(shared=True)
        try:
            for round_ in range(25):
                seq = first_seq + 2 * round_
                _apply(db, fleet, [_sample(d, seq) for d in order])
        except BaseException as exc:  # a deadlock victim's error, raised by the commit
            errors.append(exc)

    threads = [
        threading.Thread(target=replica, args=(devices, 1)),
        threading.Thread(target=replica, args=(devices[::-1], 2)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[0]
    with db.session() as session:
        stored = session.scalar(select(func.count()).select_from(TelemetrySample))
    assert stored == len(devices) * 51
    db.close()
