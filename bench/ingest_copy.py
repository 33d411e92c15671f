"""Bench: one telemetry batch written to PostgreSQL with COPY against executemany.

    .venv/bin/python bench/ingest_copy.py --database-url postgresql+psycopg://postgres@127.0.0.1/lepton_bench

The registry's write path as the bridge runs it (`Fleet.apply`, one transaction per batch):
`--devices` devices registered first, then batches of `--batch` samples (each device's next
seq, devices taken in turn, as a steady fleet sends them), written alternately by a Fleet
with COPY and one with executemany, each on its own devices so that both update rows of the
same kind. Printed: the median time per batch of each, and of this process's CPU time in it
(the controller's share of the work: the rest is the database server's), and their ratios
(goals: COPY faster, and less controller CPU).
The database is emptied first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from lepton_edge.controller.db import Database  # noqa: E402
from lepton_edge.controller.fleet import Batch, Fleet  # noqa: E402
from lepton_edge.shared import messages  # noqa: E402
from lepton_edge.shared.messages import CpuSample, MemorySample, Telemetry  # noqa: E402


def sample(device_id: str, seq: int) -> tuple[Telemetry, str]:
    telemetry = Telemetry(
        device_id=device_id,
        ts=time.time(),
        seq=seq,
        epoch="e1",
        cpu=CpuSample(percent=12.5),
        memory=MemorySample(used_mb=512, available_mb=1536, percent=25),
    )
    return telemetry, messages.encode(telemetry).decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL URL (psycopg)")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000, help="samples per batch")
    parser.add_argument("--rounds", type=int, default=30, help="batches per path")
    args = parser.parse_args()
    db = Database(args.database_url)
    with db.engine.begin() as connection:  # an empty database, migrations included
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    db.migrate()
    fleets = {"copy": Fleet(copy=True), "executemany": Fleet(copy=False)}
    seconds: dict[str, list[float]] = {name: [] for name in fleets}
    cpu: dict[str, list[float]] = {name: [] for name in fleets}  # this process's share
    for name, fleet in fleets.items():  # register every device (not timed)
        ids = [f"{name}-{n:05d}" for n in range(args.devices)]
        for start in range(0, len(ids), 2000):
            with db.session() as session:
                fleet.apply(session, Batch(telemetry=[sample(d, 0) for d in ids[start:][:2000]]))
    position = 0
    for round_ in range(args.rounds):
        devices = [(position + k) % args.devices for k in range(args.batch)]
        position += args.batch
        seq = 1 + position // args.devices
        order = list(fleets.items()) if round_ % 2 == 0 else list(fleets.items())[::-1]
        for name, fleet in order:
            batch = Batch(telemetry=[sample(f"{name}-{d:05d}", seq + round_) for d in devices])
            started, cpu0 = time.perf_counter(), time.process_time()
            with db.session() as session:
                fleet.apply(session, batch)
            seconds[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu0)
    print(f"batch of {args.batch} samples over {args.devices} devices, {args.rounds} rounds each")
    wall = {name: statistics.median(values) * 1000 for name, values in seconds.items()}
    ours = {name: statistics.median(values) * 1000 for name, values in cpu.items()}
    for name in fleets:
        print(
            f"  {name:12s} {wall[name]:7.1f} ms per batch ({args.batch / wall[name] * 1000:,.0f}"
            f" samples/s), of which {ours[name]:.1f} ms CPU in this process (medians)"
        )
    checks = [
        (f"COPY x{wall['executemany'] / wall['copy']:.2f} faster per batch (> 1)", "faster"),
        (f"COPY x{ours['executemany'] / ours['copy']:.2f} less controller CPU (> 1)", "cpu"),
    ]
    ok = {"faster": wall["copy"] < wall["executemany"], "cpu": ours["copy"] < ours["executemany"]}
    for line, goal in checks:
        print(f"{'PASS' if ok[goal] else 'FAIL'}  {line}")
    db.close()
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
