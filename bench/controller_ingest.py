"""Telemetry ingestion: 2,000 simulated devices through mosquitto, as fast as one publisher can.

In the same run, a bare paho subscriber (another process, only counting) and the controller's
MQTT bridge (this process: decode with the shared models, gap/duplicate tracking, batched
writes to the database) take the same stream. Printed: each one's rate from the first publish
to its last message (received / committed), their ratio (goal >= 0.6) and the gaps counted.
The bridge acknowledges each message only after the batch holding it is committed.

Then the same controller as a process of its own, killed (SIGKILL) while 100 devices publish
10 samples a second each and started again 3 s later: printed, the samples sent and how many
of them are missing from the database (goal 0).

    .venv/bin/python bench/controller_ingest.py                       # SQLite (the default)
    .venv/bin/python bench/controller_ingest.py --database-url postgresql+psycopg://postgres@127.0.0.1/lepton_bench
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.mosquitto import Mosquitto  # noqa: E402

ROOT = "lepton/v1/dev"


class QuietMosquitto(Mosquitto):
    """The test broker minus per-message logging, which would be the bottleneck here."""

    def write_config(self) -> None:
        self.config.write_text(
            f"per_listener_settings false\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\n"
            "max_queued_messages 1000000\nmax_inflight_messages 0\n"
        )


def payload(device: str, seq: int) -> bytes:
    from lepton_edge.shared import messages
    from lepton_edge.shared.messages import (
        BatterySample,
        CpuSample,
        InferenceStats,
        MemorySample,
        Telemetry,
        ThermalSample,
    )

    return messages.encode(
        Telemetry(
            device_id=device,
            ts=time.time(),
            seq=seq,
            cpu=CpuSample(
                percent=37.5, per_core=[30.0, 45.0], freq_mhz=2400, load_avg=(0.5, 0.4, 0.3)
            ),
            memory=MemorySample(used_mb=812, available_mb=3100, percent=20.7),
            battery=BatterySample(percent=64.0, charging=False, power_w=4.2, source="simulated"),
            thermal=ThermalSample(max_c=51.0, zones={"cpu": 51.0}, source="simulated"),
            inference=InferenceStats(
                variant="tflite-int8-static",
                frames=150,
                fps=30.0,
                latency_p50_ms=0.9,
                latency_p95_ms=1.3,
                latency_p99_ms=1.8,
            ),
            power_level="balanced",
            active_bundle="fmnist-1",
            active_variant="tflite-int8-static",
        )
    )


def bare_subscriber(port: int, expected: int, ready: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    state = {"n": 0, "last": 0.0}
    done = mp.Event()

    def on_message(_c, _u, _m) -> None:  # type: ignore[no-untyped-def]
        state["n"] += 1
        if state["n"] >= expected:
            state["last"] = time.time()
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare-subscriber", protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.on_connect = lambda cl, *_: (cl.subscribe(f"{ROOT}/+/telemetry", qos=1), ready.set())
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(600)
    c.loop_stop()
    out.put(("bare", state["n"], state["last"]))


def publisher(
    port: int,
    ids: list[str],
    rounds: int,
    start: mp.Event,
    out: mp.Queue,  # type: ignore[type-arg]
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    # Encode up front: we measure the receivers, not pydantic on the publisher side.
    messages = [(f"{ROOT}/{d}/telemetry", payload(d, r)) for r in range(rounds) for d in ids]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"load-{ids[0]}", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    start.wait()
    t0 = time.time()
    infos = [c.publish(t, p, qos=1) for t, p in messages]
    for info in infos:
        info.wait_for_publish(120)
    t1 = time.time()
    c.loop_stop()
    out.put(("pub", len(messages), t0, t1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20, help="telemetry messages per device")
    parser.add_argument("--publishers", type=int, default=2, help="load generator processes")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()
    total = args.devices * args.rounds

    from lepton_edge.controller.bridge import Bridge
    from lepton_edge.controller.config import ControllerSettings
    from lepton_edge.controller.db import Database

    with tempfile.TemporaryDirectory(prefix="lepton-ingest-") as tmp:
        broker = QuietMosquitto(Path(tmp)).start()
        settings = ControllerSettings(
            state_dir=Path(tmp) / "state",
            database_url=args.database_url,
            mqtt={"host": broker.host, "port": broker.port, "username": None},
        )
        db = Database(settings.db_url())
        db.migrate()
        bridge = Bridge(settings, db)
        bridge.start()
        assert bridge.wait_connected(10), "bridge did not connect"
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        ready, start = ctx.Event(), ctx.Event()
        bare = ctx.Process(target=bare_subscriber, args=(broker.port, total, ready, out))
        ids = [f"sim-{i:05d}" for i in range(args.devices)]
        pubs = [
            ctx.Process(
                target=publisher,
                args=(broker.port, ids[k :: args.publishers], args.rounds, start, out),
            )
            for k in range(args.publishers)
        ]
        bare.start()
        for p in pubs:
            p.start()
        ready.wait(30)
        time.sleep(2.0)  # publishers encode their messages
        start.set()
        deadline = time.time() + 600
        while (
            bridge.counters.telemetry + bridge.counters.duplicates < total
            and time.time() < deadline
        ):
            time.sleep(0.005)
        controller_last = time.time()
        results: dict[str, list[tuple]] = {}  # type: ignore[type-arg]
        for _ in range(1 + args.publishers):
            item = out.get(timeout=600)
            results.setdefault(item[0], []).append(item)
        for p in pubs:
            p.join(30)
        bare.join(30)
        bridge.stop()
        with db.session() as session:
            from lepton_edge.controller.fleet import counts

            c = counts(session)
        db.close()
        broker.stop()

    sent = sum(r[1] for r in results["pub"])
    t0 = min(r[2] for r in results["pub"])
    t1 = max(r[3] for r in results["pub"])
    _, bare_n, bare_last = results["bare"][0]
    pub_rate = sent / (t1 - t0)
    bare_rate = bare_n / (bare_last - t0)
    ctl_n = bridge.counters.telemetry
    ctl_rate = ctl_n / (controller_last - t0)
    print(
        f"devices {args.devices}, messages {sent} ({args.rounds} per device), database {db.engine.dialect.name}"
    )
    print(f"publishers ({args.publishers})   {pub_rate:9.0f} msg/s")
    print(f"bare subscriber  {bare_rate:9.0f} msg/s  ({bare_n} received)")
    print(
        f"controller       {ctl_rate:9.0f} msg/s  ({ctl_n} validated and committed, {bridge.counters.batches} batches)"
    )
    print(f"ratio controller / bare subscriber: {ctl_rate / bare_rate:.2f}  (goal >= 0.6)")
    print(
        f"gaps {c['gaps']}, duplicates {c['duplicates']}, rejected "
        f"{bridge.counters.rejected_malformed + bridge.counters.rejected_oversized + bridge.counters.rejected_topic}, "
        f"dropped {bridge.counters.dropped_queue_full}, devices in registry {c['total']}"
    )
    lost = killed_controller(args.database_url)
    ok = ctl_rate / bare_rate >= 0.6 and c["gaps"] == 0 and ctl_n == sent and lost == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def killed_controller(database_url: str | None, devices: int = 100) -> int:
    """Samples missing from the database after a kill -9 of the controller mid-stream."""
    import signal
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from sqlalchemy import func, select

    from lepton_edge.controller.db import Database
    from lepton_edge.controller.tables import TelemetrySample
    from tests.controller.test_restart import _serve
    from tests.mosquitto import free_port

    with tempfile.TemporaryDirectory(prefix="lepton-kill-") as tmp:
        broker = QuietMosquitto(Path(tmp)).start()
        url = database_url or f"sqlite:///{tmp}/controller.db"
        port = free_port()
        keep = {"INGEST__HISTORY_PER_DEVICE": "100000"}
        proc = _serve(Path(tmp), url, broker, port, **keep)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        ids = [f"kill-{i:03d}" for i in range(devices)]
        sent = [0]
        stop = threading.Event()

        def publish() -> None:
            seq = 0
            while not stop.is_set():
                for d in ids:
                    pub.publish(f"{ROOT}/{d}/telemetry", payload(d, seq), 1)
                    sent[0] += 1
                seq += 1
                time.sleep(0.1)

        thread = threading.Thread(target=publish)
        thread.start()
        time.sleep(3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(3)
        proc = _serve(Path(tmp), url, broker, port, **keep)
        time.sleep(2)
        stop.set()
        thread.join()
        db = Database(url)
        stored = 0
        deadline = time.time() + 60
        while time.time() < deadline:
            with db.session() as session:
                stored = session.scalar(select(func.count()).select_from(TelemetrySample)) or 0
            if stored >= sent[0]:
                break
            time.sleep(0.5)
        db.close()
        proc.terminate()
        proc.wait(10)
        pub.loop_stop()
        broker.stop()
    lost = sent[0] - stored
    print(
        f"controller killed (SIGKILL) mid-stream and restarted 3 s later: {sent[0]} samples "
        f"sent, {lost} missing from the database (goal 0)  {'PASS' if lost == 0 else 'FAIL'}"
    )
    return lost


if __name__ == "__main__":
    raise SystemExit(main())
