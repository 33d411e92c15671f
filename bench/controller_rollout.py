"""Rollout of 200 lightweight agents to 100 % through four waves (1 %, 10 %, 50 %, 100 %).

Each agent is the real `lepton_edge.agent.service.Agent` (MQTT link, outbox, artifact store that checks
the signature and every sha256) without an inference engine, spread over worker processes.
The controller runs here: API (uvicorn), MQTT bridge and rollout loop, SQLite by default.
Printed: time to complete, time per wave, artifact bytes the agents downloaded and the
aggregate rate, deploy commands per device, and a single-stream download rate on loopback.

    .venv/bin/python bench/controller_rollout.py
    .venv/bin/python bench/controller_rollout.py --agents 50 --workers 2
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.mosquitto import Mosquitto, free_port  # noqa: E402


def worker(
    port: int,
    key_file: str,
    base: str,
    ids: list[str],
    stop: mp.Event,
    out: mp.Queue,  # type: ignore[type-arg]
) -> None:
    """A slice of the fleet: real agents, no inference; report what each one ended with."""
    import logging

    logging.disable(logging.WARNING)
    from lepton_edge.agent.config import AgentSettings
    from lepton_edge.agent.service import Agent

    agents = []
    for device_id in ids:
        settings = AgentSettings(
            device_id=device_id,
            state_dir=Path(base) / device_id,
            controller_key_file=Path(key_file),
            telemetry_interval_s=2.0,
            mqtt={"host": "127.0.0.1", "port": port, "keepalive_s": 60},
            probes={"battery": "none", "thermal": "none", "gpu": "none"},
        )
        agent = Agent(settings)
        agent.start()
        agents.append(agent)
    stop.wait()
    report = []
    for agent in agents:
        stored = sum(
            f.stat().st_size
            for f in (Path(base) / agent.device_id).rglob("*")
            if f.is_file() and f.suffix in (".onnx", ".tflite")
        )
        report.append((agent.device_id, agent.active.bundle_id if agent.active else None, stored))
    for agent in agents:
        agent.stop(flush_timeout=1)
    out.put(report)


def make_bundle(out: Path, key, sizes: dict[str, int]):  # type: ignore[no-untyped-def]
    from lepton_edge.shared.manifest import (
        MANIFEST_FILE,
        Manifest,
        Requirements,
        Variant,
        VariantMetrics,
    )
    from lepton_edge.shared.signing import sign_manifest

    out.mkdir(parents=True)
    variants = []
    for vid, size in sizes.items():
        data = os.urandom(size)
        sha = hashlib.sha256(data).hexdigest()
        (out / f"{sha}.onnx").write_bytes(data)
        variants.append(
            Variant(
                id=vid,
                format="onnx",
                precision="fp32" if "fp32" in vid else "int8",
                scheme="bench",
                sha256=sha,
                size_bytes=size,
                metrics=VariantMetrics(
                    accuracy=0.9 if "fp32" in vid else 0.899,
                    accuracy_delta=0 if "fp32" in vid else -0.1,
                    latency_p50_ms=0.05,
                ),
                requirements=Requirements(runtime="onnxruntime"),
            )
        )
    manifest = Manifest(
        bundle_id=out.name if out.name != "bundle" else "bench-1",
        model_name="bench",
        version="1",
        created_at=time.time(),
        num_classes=10,
        variants=variants,
    )
    (out / MANIFEST_FILE).write_text(sign_manifest(manifest, key).model_dump_json())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4, help="processes hosting the agents")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    import logging

    import httpx
    import uvicorn

    logging.disable(logging.WARNING)
    from lepton_edge.controller.app import create_app
    from lepton_edge.controller.bundles import pack
    from lepton_edge.controller.config import ControllerSettings
    from lepton_edge.shared.signing import load_or_create_private_key, public_pem

    with tempfile.TemporaryDirectory(prefix="lepton-rollout-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker").start()
        port = free_port()
        token = "lep_bench-admin-token-0123456789"
        settings = ControllerSettings(
            state_dir=tmp / "controller",
            database_url=args.database_url,
            http_port=port,
            public_url=f"http://127.0.0.1:{port}",
            bootstrap_admin_token=token,
            mqtt={"host": broker.host, "port": broker.port, "username": None},
            rollout={"tick_s": 0.2, "soak_s": 0, "wave_timeout_s": 300, "require_inferring": False},
        )
        key = load_or_create_private_key(settings.key_path())
        key_file = tmp / "controller.pem"
        key_file.write_bytes(public_pem(key.public_key()))
        sizes = {"onnx-fp32": 1_000_000, "onnx-int8-static": 260_000}
        make_bundle(tmp / "bundle", key, sizes)
        big = {"big-fp32": 64 * 1024 * 1024}

        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        http = httpx.Client(
            base_url=settings.base_url(), headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert http.post("/api/v1/bundles", content=pack(tmp / "bundle")).status_code == 201

        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        ids = [f"edge-{i:03d}" for i in range(args.agents)]
        procs = [
            ctx.Process(
                target=worker,
                args=(
                    broker.port,
                    str(key_file),
                    str(tmp / "agents"),
                    ids[k :: args.workers],
                    stop,
                    out,
                ),
            )
            for k in range(args.workers)
        ]
        t_start = time.monotonic()
        for p in procs:
            p.start()
        while len(http.get("/api/v1/devices", params={"online": "true"}).json()) < args.agents:
            time.sleep(0.2)
        t_online = time.monotonic() - t_start

        t0 = time.monotonic()
        rollout = http.post(
            "/api/v1/rollouts", json={"bundle_id": "bench-1", "target": {"all": True}}
        ).json()
        wave_sizes = [w["devices"] for w in rollout["waves"]]
        wave_done: list[float] = []
        current = 0
        while True:
            status = http.get(f"/api/v1/rollouts/{rollout['id']}").json()
            while status["current_wave"] > current:
                wave_done.append(time.monotonic() - t0)
                current += 1
            if status["state"] == "completed":
                wave_done.append(time.monotonic() - t0)
                break
            if status["state"] in ("paused", "aborted"):
                print(f"rollout {status['state']}: {status['reason']}")
                return 1
            time.sleep(0.1)
        total = time.monotonic() - t0
        deploys = [d for d in status["devices"] if d["command_id"]]
        first_sent = min(d["sent_at"] for d in status["devices"])
        last_healthy = max(d["healthy_at"] for d in status["devices"])

        # one stream on loopback: a 64 MB artifact, read to the end
        big_dir = tmp / "big"
        make_bundle(big_dir, key, big)
        with app.state.controller.db.session() as session:
            manifest, _ = app.state.controller.store.add(session, big_dir)
        sha = manifest.variants[0].sha256
        t = time.monotonic()
        n = 0
        with httpx.stream("GET", f"{settings.base_url()}/artifacts/{sha}", timeout=60) as r:
            for chunk in r.iter_bytes(1 << 20):
                n += len(chunk)
        single = n / (time.monotonic() - t)

        stop.set()
        reports = [item for _ in procs for item in out.get(timeout=120)]
        for p in procs:
            p.join(30)
        server.should_exit = True
        thread.join(15)
        broker.stop()

    active = sum(1 for _, bundle, _ in reports if bundle == "bench-1")
    downloaded = sum(size for _, _, size in reports)
    print(
        f"agents {args.agents} in {args.workers} processes (real Agent: link, outbox, store; no inference); online after {t_online:.1f} s"
    )
    print(f"waves {wave_sizes} devices; rollout to 100 %: {total:.1f} s")
    starts = [0.0, *wave_done[:-1]]
    print(
        "per wave: "
        + ", ".join(
            f"wave {i + 1} {end - start:.1f} s"
            for i, (start, end) in enumerate(zip(starts, wave_done, strict=False))
        )
    )
    print(
        f"devices on the new bundle: {active}/{args.agents}; deploy commands: {len(deploys)} (one per device)"
    )
    print(
        f"artifacts downloaded by the agents: {downloaded / 1e6:.1f} MB in {last_healthy - first_sent:.1f} s "
        f"(first deploy to last healthy): {downloaded / 1e6 / (last_healthy - first_sent):.1f} MB/s aggregate"
    )
    print(f"single stream on loopback (64 MiB artifact): {single / 1e6:.0f} MB/s")
    ok = active == args.agents and len(deploys) == args.agents
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
