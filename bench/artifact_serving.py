"""Bench: artifact downloads served by the controller against nginx with `artifact_offload_uri`.

    .venv/bin/python bench/artifact_serving.py [--downloads 100 --parallel 50 --mb 8]

One `lepton-controller serve` (its own process, SQLite) with a bundle holding one `--mb` MB
artifact (8 MB by default: between MobileNetV2's int8 and fp32 files); `--downloads` downloads of it with a device's grant, `--parallel` at once (httpx,
this process), in rounds that alternate between the two paths on the same controller
configuration but for the setting:

- direct: uvicorn sends the body (Starlette's FileResponse reads the file in chunks);
- offload: deploy/nginx/lepton-controller.conf in front, the controller answers
  X-Accel-Redirect after the grant check and nginx sends the file with sendfile.

Each download's sha256 is checked. Printed, per path (the sum of its rounds): aggregate MB/s
and the controller's CPU seconds per GB sent and per download (psutil), and their ratios.
Goals (issue 18): offload takes at least 10x less controller CPU per GB, and is not slower
(0.9 or more of the direct throughput: on 2 cores the downloading side, this process hashing
every byte, is the limit of both).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench.controller_rollout import make_bundle  # noqa: E402
from lepton_edge.controller.bundles import pack  # noqa: E402
from lepton_edge.shared.signing import load_or_create_private_key  # noqa: E402
from tests.deploy.support import ControllerProcess  # noqa: E402
from tests.nginx import Nginx  # noqa: E402

OFFLOAD = "/_lepton_artifacts/"


async def download(url: str, grant: str, sha256: str, count: int, parallel: int) -> int:
    """`count` downloads, `parallel` at once; the bytes received (each file's hash checked)."""
    limits = httpx.Limits(max_connections=parallel, max_keepalive_connections=parallel)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        gate = asyncio.Semaphore(parallel)

        async def one() -> int:
            async with gate:
                digest, size = hashlib.sha256(), 0
                headers = {"Authorization": f"Bearer {grant}"}
                async with http.stream("GET", url, headers=headers) as reply:
                    reply.raise_for_status()
                    async for chunk in reply.aiter_bytes(1 << 16):
                        digest.update(chunk)
                        size += len(chunk)
                if digest.hexdigest() != sha256:
                    raise ValueError("sha256 differs")
                return size

        return sum(await asyncio.gather(*(one() for _ in range(count))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--downloads", type=int, default=100, help="per round")
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--mb", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2, help="per path")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="artifact-serving-"))
    state = work / "state"
    key = load_or_create_private_key(state / "keys" / "signing.pem")
    make_bundle(work / "bundle", key, {"onnx-fp32": int(args.mb * 1e6)})
    sha256 = json.loads((work / "bundle" / "manifest.json").read_text())["variants"][0]["sha256"]
    totals = {"direct": [0.0, 0.0, 0], "offload": [0.0, 0.0, 0]}  # seconds, cpu s, bytes
    for round_ in range(args.rounds * 2):
        path = ("direct", "offload")[round_ % 2]
        settings = {"state_dir": str(state), "database_url": f"sqlite:///{work / 'c.db'}"}
        if path == "offload":
            settings["artifact_offload_uri"] = OFFLOAD
        controller = ControllerProcess(work / f"controller-{round_}", settings).start()
        nginx = None
        try:
            http = httpx.Client(
                base_url=controller.url,
                headers={"Authorization": f"Bearer {controller.admin_token}"},
                timeout=60,
            )
            if round_ == 0:
                reply = http.post("/api/v1/bundles", content=pack(work / "bundle"))
                assert reply.status_code == 201, reply.text
            base = controller.url
            if path == "offload":
                nginx = Nginx(work / f"nginx-{round_}", controller.port, state / "artifacts")
                base = nginx.start().url
            grant = _grant(state, "bench-1")
            assert controller.proc is not None
            proc = psutil.Process(controller.proc.pid)
            cpu0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
            sent = asyncio.run(
                download(f"{base}/artifacts/{sha256}", grant, sha256, args.downloads, args.parallel)
            )
            seconds = time.perf_counter() - t0
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            total = totals[path]
            total[0] += seconds
            total[1] += cpu
            total[2] += sent
        finally:
            if nginx is not None:
                nginx.stop()
            controller.stop()
    rows = {}
    for path, (seconds, cpu, sent) in totals.items():
        rows[path] = (sent / 1e6 / seconds, cpu / (sent / 1e9))
        per_download = cpu / (args.downloads * args.rounds) * 1000
        print(
            f"{path:8s} {sent / 1e9:5.2f} GB in {seconds:6.1f} s: {rows[path][0]:7.1f} MB/s, "
            f"controller {rows[path][1]:6.2f} CPU s per GB ({per_download:.1f} ms per download)"
        )
    speed = rows["offload"][0] / rows["direct"][0]
    cpu_ratio = rows["direct"][1] / max(rows["offload"][1], 1e-9)
    checks = [
        (f"controller CPU per GB x{cpu_ratio:.1f} lower with offload (>= 10)", cpu_ratio >= 10),
        (f"offload x{speed:.2f} the direct throughput (>= 0.9)", speed >= 0.9),
    ]
    for line, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {line}")
    return 0 if all(ok for _, ok in checks) else 1


def _grant(state: Path, bundle_id: str) -> str:
    """A device's download grant, made with the controller's own key (as its deploy would)."""
    from lepton_edge.controller.bundles import BundleStore

    store = BundleStore(state / "artifacts", state / "bundles", state / "keys" / "signing.pem")
    return store.grant("bench", bundle_id)


if __name__ == "__main__":
    raise SystemExit(main())
