"""Bench: a fleet of ten thousand on one node — ingestion cost, lag, loss and the device API.

    .venv/bin/python bench/fleet_scale.py                       # 10,000 devices, 5 s, 10 min, SQLite
    .venv/bin/python bench/fleet_scale.py --seconds 120         # shorter
    .venv/bin/python bench/fleet_scale.py --database-url postgresql+psycopg://postgres@127.0.0.1/lepton_bench

`lepton-controller serve` (its own process, SQLite in its state dir unless --database-url)
and mosquitto on this machine; bench/loadgen.py's simulated devices (2 processes) connect
over `--ramp` seconds, then each publishes telemetry every `--interval` seconds for
`--seconds`. Measured in this one run, over the steady part (after the ramp):
the controller's CPU time per second of wall time (psutil), divided by the telemetry rate in
thousands of messages per second; the p99 of `lepton_ingest_lag_seconds` (sample timestamp to
commit; the devices share this machine's clock); samples acknowledged by the broker against
samples in the registry; and the time to answer one page of 100 devices (median of 20).
Goals (issue 18): <= 0.25 core per 1,000 msg/s, lag p99 <= 2 s, 0 lost, page <= 100 ms.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench import loadgen  # noqa: E402
from bench.controller_ingest import QuietMosquitto  # noqa: E402
from tests.deploy.support import ControllerProcess  # noqa: E402

LAG = "lepton_ingest_lag_seconds_bucket"


def lag_buckets(controller: ControllerProcess) -> dict[float, float]:
    text = httpx.get(f"{controller.url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith(LAG):
            bound = re.search(r'le="([^"]+)"', line)
            if bound:
                out[float(bound.group(1))] = float(line.rsplit(" ", 1)[1])
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The bucket bound under which a fraction `q` of the samples observed between fell."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = counts[-1][1] if counts else 0.0
    for bound, seen in counts:
        if total and seen >= q * total:
            return bound
    return float("inf")


def stored(controller: ControllerProcess, headers: dict[str, str]) -> tuple[int, int, int]:
    """(devices, samples, gaps) in the registry, walked page by page."""
    devices = samples = gaps = 0
    query: dict[str, Any] = {"limit": 1000}
    while True:
        reply = httpx.get(
            f"{controller.url}/api/v1/devices", params=query, headers=headers, timeout=30
        )
        rows = reply.json()
        devices += len(rows)
        samples += sum(d["telemetry_count"] for d in rows)
        gaps += sum(d["gaps"] for d in rows)
        cursor = reply.headers.get("x-next-cursor")
        if not cursor:
            return devices, samples, gaps
        query["cursor"] = cursor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--ramp", type=float, default=60.0)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    broker = QuietMosquitto(work)
    broker.start()
    settings: dict[str, Any] = {"mqtt": {"enabled": True, "host": broker.host, "port": broker.port}}
    if args.database_url:
        settings["database_url"] = args.database_url
    controller = ControllerProcess(work / "controller", settings).start()
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    assert controller.proc is not None
    proc = psutil.Process(controller.proc.pid)
    fleet = loadgen.parser().parse_args(
        [
            f"--devices={args.devices}",
            f"--interval={args.interval}",
            f"--seconds={args.seconds}",
            f"--ramp={args.ramp}",
            f"--port={broker.port}",
        ]
    )
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(counts=loadgen.run(fleet)))
    try:
        started = time.monotonic()
        runner.start()
        time.sleep(args.ramp + args.interval)  # every device connected and publishing
        cpu0, lag0, wall0 = sum(proc.cpu_times()[:2]), lag_buckets(controller), time.monotonic()
        _, samples0, _ = stored(controller, headers)
        page_ms = []
        for _ in range(20):
            t = time.perf_counter()
            httpx.get(f"{controller.url}/api/v1/devices", params={"limit": 100}, headers=headers)
            page_ms.append((time.perf_counter() - t) * 1000)
        steady_end = started + args.ramp + args.seconds - args.interval
        time.sleep(max(0.0, steady_end - time.monotonic()))
        cpu1, lag1, wall1 = sum(proc.cpu_times()[:2]), lag_buckets(controller), time.monotonic()
        _, samples1, _ = stored(controller, headers)
        runner.join()
        counts = result["counts"]
        deadline = time.monotonic() + 120
        while True:
            devices, total, gaps = stored(controller, headers)
            if total >= counts.samples or time.monotonic() > deadline:
                break
            time.sleep(2)
    finally:
        controller.stop()
        broker.stop()
    rate = (samples1 - samples0) / (wall1 - wall0)
    cores = (cpu1 - cpu0) / (wall1 - wall0)
    per_k = cores / (rate / 1000) if rate else float("inf")
    p99 = quantile(lag0, lag1, 0.99)
    page = statistics.median(page_ms)
    lost = counts.samples - total
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"{args.devices} devices, a sample every {args.interval:g} s, {args.seconds:g} s, "
        f"{database}: {devices} in the registry, {counts.samples} samples acknowledged by the "
        f"broker, {total} stored, {gaps} gaps"
    )
    print(
        f"steady: {rate:.0f} msg/s ingested, controller {cores:.2f} cores "
        f"= {per_k:.3f} core per 1,000 msg/s; lag p99 <= {p99:g} s; one page of 100 devices "
        f"{page:.1f} ms (median of 20, {max(page_ms):.1f} max)"
    )
    checks = [
        (f"controller {per_k:.3f} core per 1,000 msg/s (<= 0.25)", per_k <= 0.25),
        (f"ingest lag p99 <= {p99:g} s (<= 2)", p99 <= 2),
        (f"{lost} samples lost (0)", lost == 0 and counts.failed == 0),
        (f"one page of 100 devices {page:.1f} ms (<= 100)", page <= 100),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
