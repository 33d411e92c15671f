"""Bench: two controller replicas under the 10,000-device load — the split, and a leader killed
mid-rollout.

    .venv/bin/python bench/fleet_replicas.py --database-url postgresql+psycopg://postgres@127.0.0.1/lepton_bench

Two `lepton-controller serve` processes on one PostgreSQL (the database is emptied first) and
one mosquitto, sharing telemetry through the MQTT v5 shared subscription `$share/controllers/…`
and one state directory, behind a TCP balancer (HAProxy's role in deploy/scale-out: each
connection to the next replica that accepts it). bench/loadgen.py's devices (telemetry every
5 s) connect over `--ramp` seconds. Measured in this one run:

1. the split: each replica's share of the telemetry ingested over `--window` seconds
   (`lepton_telemetry_ingested_total`), goal within 40/60;
2. fail-over: a rollout to `--rollout` devices (waves 1, 10, 50, 100 %, real downloads through
   the balancer); in its third wave the leader gets SIGKILL. Timed from the kill: the other
   replica leading, and the rollout going on (one more device healthy), goal <= 10 s. The
   killed replica is started again 5 s later, as `Restart=on-failure` would: its session is
   persistent, so the broker (mosquitto here, EMQX alike) keeps queuing its share of the
   telemetry until it is back (see deploy/scale-out/README.md);
3. loss: samples the devices sent (every publish acknowledged by the broker) against rows in
   `telemetry_samples` (each sample once, whichever replica stored it), goal 0 lost.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402

from bench import loadgen  # noqa: E402
from bench.controller_ingest import QuietMosquitto  # noqa: E402
from bench.controller_rollout import make_bundle  # noqa: E402
from lepton_edge.controller.bundles import pack  # noqa: E402
from lepton_edge.controller.tables import TelemetrySample  # noqa: E402
from lepton_edge.shared.signing import load_or_create_private_key  # noqa: E402
from tests.deploy.support import ControllerProcess  # noqa: E402
from tests.mosquitto import free_port  # noqa: E402

SIZES = {"onnx-fp32": 1_000_000, "onnx-int8-static": 260_000}
INGESTED = "lepton_telemetry_ingested_total"


class Balancer:
    """A TCP load balancer in a thread: each connection goes to the next backend in turn that
    accepts it, so a dead replica is passed over."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.port = free_port()
        self._turn = itertools.cycle(range(len(ports)))
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._serve, args=(started,), daemon=True).start()
        started.wait(10)

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port)
        )
        started.set()
        self._loop.run_until_complete(server.serve_forever())

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = next(self._turn)
        for k in range(len(self.ports)):
            port = self.ports[(first + k) % len(self.ports)]
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            return
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `predicate` held."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"FAIL  {what} not within {timeout:g} s")
        time.sleep(0.1)
    return time.monotonic() - started


def leading(controller: ControllerProcess) -> bool:
    try:
        return bool(httpx.get(f"{controller.url}/healthz", timeout=2).json()["leader"])
    except (httpx.HTTPError, ValueError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL URL (psycopg)")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rollout", type=int, default=1000, help="devices in the rollout")
    parser.add_argument("--ramp", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=60.0, help="seconds the split is taken")
    parser.add_argument("--seconds", type=float, default=300.0, help="how long devices publish")
    args = parser.parse_args()
    engine = create_engine(args.database_url)
    with engine.begin() as connection:  # an empty database, migrations included
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    work = Path(tempfile.mkdtemp(prefix="fleet-replicas-"))
    broker = QuietMosquitto(work)
    broker.start()
    ports = [free_port(), free_port()]
    balancer = Balancer(ports)
    settings: dict[str, Any] = {
        "database_url": args.database_url,
        "state_dir": str(work / "shared-state"),
        "public_url": f"http://127.0.0.1:{balancer.port}",
        "mqtt": {
            "enabled": True,
            "host": broker.host,
            "port": broker.port,
            "shared_subscription_group": "controllers",
        },
        "rollout": {"tick_s": 0.2, "soak_s": 0, "require_inferring": False, "resend_after_s": 5},
    }
    replicas = [
        ControllerProcess(work / name, {**settings, "http_port": port})
        for name, port in zip(("replica-a", "replica-b"), ports, strict=True)
    ]
    for replica, port in zip(replicas, ports, strict=True):
        replica.port, replica.url = port, f"http://127.0.0.1:{port}"
    key = load_or_create_private_key(work / "shared-state" / "keys" / "signing.pem")
    make_bundle(work / "bundle", key, SIZES)
    replicas[0].start()  # first alone: it creates the schema
    wait_for(lambda: leading(replicas[0]), 30, "the first replica leading")
    replicas[1].start()
    http = httpx.Client(
        base_url=replicas[1].url,
        headers={"Authorization": f"Bearer {replicas[1].admin_token}"},
        timeout=60,
    )
    fleet = loadgen.parser().parse_args(
        [
            f"--devices={args.devices}",
            "--interval=5",
            f"--seconds={args.seconds}",
            f"--ramp={args.ramp}",
            f"--port={broker.port}",
        ]
    )
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(counts=loadgen.run(fleet)))
    try:
        runner.start()
        assert http.post("/api/v1/bundles", content=pack(work / "bundle")).status_code == 201
        wait_for(
            lambda: http.get("/api/v1/devices/summary").json()["online"]["online"] >= args.devices,
            args.ramp + 60,
            "the fleet online",
        )
        time.sleep(5)
        before = [r.metrics().get(INGESTED, 0.0) for r in replicas]
        time.sleep(args.window)
        shares = [r.metrics().get(INGESTED, 0.0) - b for r, b in zip(replicas, before, strict=True)]
        split = min(shares) / max(1.0, sum(shares))

        leader = replicas[0] if leading(replicas[0]) else replicas[1]
        survivor = replicas[1] if leader is replicas[0] else replicas[0]
        targets = [f"load-{n:05d}" for n in range(args.rollout)]
        rollout = http.post(
            "/api/v1/rollouts",
            json={
                "bundle_id": "bench-1",
                "target": {"device_ids": targets},
                "waves": [1, 10, 50, 100],
            },
        ).json()

        def status() -> dict[str, Any]:
            return dict(
                httpx.get(
                    f"{survivor.url}/api/v1/rollouts/{rollout['id']}",
                    headers={"Authorization": f"Bearer {survivor.admin_token}"},
                    timeout=30,
                ).json()
            )

        def healthy() -> int:
            return sum(d["state"] == "healthy" for d in status()["devices"])

        third = int(args.rollout * 0.15)  # waves 1 and 2 (10 %) done, the third under way
        wait_for(lambda: healthy() > third, 120, "the third wave under way")
        assert leader.proc is not None
        leader.proc.kill()
        killed = time.monotonic()
        at_kill = healthy()
        took_lead = wait_for(lambda: leading(survivor), 60, "the other replica leading")
        resumed = wait_for(lambda: healthy() > at_kill, 60, "the rollout going on")
        resumed += took_lead
        time.sleep(max(0.0, 5 - (time.monotonic() - killed)))
        leader.start()  # as systemd or compose would restart it
        final = status()
        deadline = time.monotonic() + 180
        while final["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            final = status()
        runner.join()
        counts = result["counts"]
        deadline = time.monotonic() + 120
        with engine.connect() as connection:
            while True:
                stored = connection.execute(select(func.count()).select_from(TelemetrySample))
                rows = int(stored.scalar_one())
                if rows >= counts.samples or time.monotonic() > deadline:
                    break
                time.sleep(2)
                connection.rollback()
    finally:
        for replica in replicas:
            replica.stop()
        broker.stop()
        engine.dispose()
    lost = counts.samples - rows
    print(
        f"{args.devices} devices, telemetry every 5 s; {counts.samples:,} samples sent "
        f"({counts.acked:,} of {counts.published:,} publishes acknowledged), {rows:,} stored"
    )
    print(f"split over {args.window:g} s: {shares[0]:,.0f} / {shares[1]:,.0f} samples")
    print(
        f"leader killed with {at_kill} of {args.rollout} devices healthy; the other led after "
        f"{took_lead:.1f} s, the rollout went on after {resumed:.1f} s and ended "
        f"{final['state']} ({sum(d['state'] == 'healthy' for d in final['devices'])} healthy)"
        + (f": {final['reason']}" if final["state"] != "completed" else "")
    )
    checks = [
        (f"split {split:.0%} / {1 - split:.0%} (within 40/60)", split >= 0.4),
        (f"rollout resumed {resumed:.1f} s after the kill (<= 10)", resumed <= 10),
        (f"rollout {final['state']}", final["state"] == "completed"),
        (f"{lost} samples lost (0)", lost == 0 and counts.acked == counts.published),
    ]
    for line, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {line}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
