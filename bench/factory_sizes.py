"""Bench: a ladder that spans model size on the reference where size matters.

    .venv/bin/python bench/factory_sizes.py

The large Fashion-MNIST CNN and its distilled half-width student, as committed by
`examples/fashion_mnist/train.py --large` (3 epochs on the 60,000 training images, the
student distilled for 3 more; T = 2, alpha = 0.5), in one bundle: every scheme of both
architectures, calibrated on 500 training images, judged on the 10,000 test images,
timed together in interleaved rounds (LiteRT and ONNX Runtime, 1 thread, batch 1). Prints
each variant's parameters, MACs, accuracy and p50 latency, then checks: the base fp32
costs >= 0.5 ms; the student's cheapest accepted int8 is >= 4x cheaper than the base fp32
of the same format at <= 2 points accuracy loss (at one thread, wall time per inference is
its CPU time). The bundle is cached for bench/engine_battery.py --model large; delete
$BENCH_CACHE/fashion_mnist_large to rebuild it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.engine_overhead import CACHE  # noqa: E402
from lepton_edge.controller.demo.bundle import FLEET_MODEL, FLEET_STUDENT  # noqa: E402
from lepton_edge.shared.manifest import Manifest, Precision  # noqa: E402

BUNDLE = CACHE / "fashion_mnist_large"


def large_bundle() -> tuple[Path, float | None]:
    """The bundle (cached) and how long building it took (None when it came from the cache)."""
    if (BUNDLE / "manifest.json").is_file():
        return BUNDLE, None
    from lepton_edge.controller.factory import build_bundle
    from lepton_edge.shared.idx import FASHION_MNIST_LABELS, fashion_mnist
    from lepton_edge.shared.signing import generate_key

    x_train, _ = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")
    started = time.perf_counter()
    BUNDLE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        staging = Path(tmp) / "bundle"
        build_bundle(
            staging,
            onnx=FLEET_MODEL[0],
            tflite=FLEET_MODEL[1],
            architectures={"student50": FLEET_STUDENT},
            calib_x=x_train[:500, ..., None],
            eval_x=x_test[..., None],
            eval_y=y_test.astype(np.int64),
            key=generate_key(),
            model_name="fashion-large",
            labels=list(FASHION_MNIST_LABELS),
            input_scale=1 / 255,
        )
        took = time.perf_counter() - started
        staging.rename(BUNDLE)
    return BUNDLE, took


def main() -> int:
    bundle, took = large_bundle()
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_bytes())
    print(f"{'variant':38} {'status':9} {'params':>8} {'M MACs':>7} {'accuracy':>8} {'p50 ms':>7}")
    for v in manifest.variants:
        print(
            f"{v.id:38} {v.status:9} {v.parameters or 0:>8} {(v.macs or 0) / 1e6:7.2f} "
            f"{v.metrics.accuracy or 0:8.4f} {v.metrics.latency_p50_ms or 0:7.3f}"
        )
    checks = []
    for fmt in ("tflite", "onnx"):
        base = manifest.variant(f"{fmt}-fp32")
        base_ms = base.metrics.latency_p50_ms or 0
        students = [
            v
            for v in manifest.accepted()
            if v.architecture == "student50"
            and v.format.value == fmt
            and v.precision is Precision.INT8
            and v.requirements.runtime != "openvino"  # the same runtime as the base fp32
        ]
        checks.append((f"{fmt}: base fp32 {base_ms:.3f} ms >= 0.5 ms", base_ms >= 0.5))
        if not students:
            checks.append((f"{fmt}: no accepted student int8", False))
            continue
        cheapest = min(students, key=lambda v: v.metrics.latency_p50_ms or float("inf"))
        ratio = base_ms / (cheapest.metrics.latency_p50_ms or 1)
        loss = ((base.metrics.accuracy or 0) - (cheapest.metrics.accuracy or 0)) * 100
        checks.append(
            (f"{fmt}: {cheapest.id} x{ratio:.2f} cheaper than {base.id} (>= 4)", ratio >= 4)
        )
        checks.append((f"{fmt}: {cheapest.id} loses {loss:.2f} points (<= 2)", loss <= 2))
    if took is not None:
        print(f"bundle built in {took:.0f} s ({len(manifest.variants)} variants)")
    else:
        print("(bundle from the cache: delete it to rebuild and time it again)")
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
