"""Bench: a rollout to 1,000 devices in four waves, with real artifact downloads.

    .venv/bin/python bench/fleet_rollout.py [--devices 1000]

`lepton-controller serve` (its own process, SQLite) and mosquitto on this machine;
bench/loadgen.py's devices (2 processes, telemetry every 5 s) carry out the deploy commands:
each downloads the manifest and the ladder's files (1 MB + 260 KB, sha256 checked) with its
grant, then reports the bundle active. The rollout: every device, waves of 1, 10, 50 and
100 %, no soak, health = the bundle reported active (no inference here). Measured in this one
run: seconds from the rollout's creation to 100 %, each wave's time, and the bytes the devices
downloaded. Goal (issue 18): <= 60 s for 1,000 devices.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench import loadgen  # noqa: E402
from bench.controller_ingest import QuietMosquitto  # noqa: E402
from bench.controller_rollout import make_bundle  # noqa: E402
from lepton_edge.controller.bundles import pack  # noqa: E402
from lepton_edge.shared.signing import load_or_create_private_key  # noqa: E402
from tests.deploy.support import ControllerProcess  # noqa: E402

SIZES = {"onnx-fp32": 1_000_000, "onnx-int8-static": 260_000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--ramp", type=float, default=20.0)
    parser.add_argument("--budget", type=float, default=240.0, help="seconds the fleet stays up")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleet-rollout-"))
    broker = QuietMosquitto(work)
    broker.start()
    controller = ControllerProcess(
        work / "controller",
        {
            "mqtt": {"enabled": True, "host": broker.host, "port": broker.port},
            "rollout": {"tick_s": 0.2, "soak_s": 0, "require_inferring": False},
        },
    )
    key = load_or_create_private_key(work / "controller" / "state" / "keys" / "signing.pem")
    make_bundle(work / "bundle", key, SIZES)
    controller.start()
    http = httpx.Client(
        base_url=controller.url,
        headers={"Authorization": f"Bearer {controller.admin_token}"},
        timeout=60,
    )
    fleet = loadgen.parser().parse_args(
        [
            f"--devices={args.devices}",
            "--interval=5",
            f"--seconds={args.budget}",
            f"--ramp={args.ramp}",
            f"--port={broker.port}",
        ]
    )
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(counts=loadgen.run(fleet)))
    try:
        runner.start()
        assert http.post("/api/v1/bundles", content=pack(work / "bundle")).status_code == 201
        deadline = time.monotonic() + args.ramp + 60
        while http.get("/api/v1/devices/summary").json()["online"]["online"] < args.devices:
            assert time.monotonic() < deadline, "the fleet did not come online"
            time.sleep(0.5)
        started = time.monotonic()
        rollout = http.post(
            "/api/v1/rollouts",
            json={"bundle_id": "bench-1", "target": {"all": True}, "waves": [1, 10, 50, 100]},
        ).json()
        waves, done = [w["devices"] for w in rollout["waves"]], []
        while True:
            status = http.get(f"/api/v1/rollouts/{rollout['id']}").json()
            while status["current_wave"] > len(done):
                done.append(time.monotonic() - started)
            if status["state"] != "running":
                done.append(time.monotonic() - started)
                break
            if time.monotonic() - started > args.budget - args.ramp:
                stuck = [d["device_id"] for d in status["devices"] if d["state"] == "deploying"]
                raise SystemExit(
                    f"FAIL  rollout not done after {args.budget - args.ramp:g} s "
                    f"({status['reason']}); still deploying: {stuck[:10]}"
                )
            time.sleep(0.2)
        total = time.monotonic() - started
        healthy = sum(d["state"] == "healthy" for d in status["devices"])
        runner.join()
    finally:
        controller.stop()
        broker.stop()
    counts = result.get("counts")
    per_wave = ", ".join(
        f"wave {i + 1} ({n} devices) {end - start:.1f} s"
        for i, (n, start, end) in enumerate(zip(waves, [0.0, *done], done, strict=False))
    )
    print(f"{args.devices} devices; rollout {status['state']} in {total:.1f} s: {per_wave}")
    if counts is not None:
        print(
            f"deploys carried out: {counts.deployed}; artifacts downloaded: "
            f"{counts.downloaded / 1e6:.0f} MB ({counts.downloaded / 1e6 / total:.0f} MB/s over "
            f"the rollout); devices healthy: {healthy}"
        )
    checks = [
        (f"rollout to 100 % of {args.devices} devices in {total:.1f} s (<= 60)", total <= 60),
        (f"{healthy} of {args.devices} devices healthy", healthy == args.devices),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
