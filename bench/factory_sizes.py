"""Bench: a ladder that spans model size on a model where size matters.

    .venv/bin/python bench/factory_sizes.py

The wide reference CNN of examples/fashion_mnist/train.py (`build_wide_model`, about 7.5 M
multiply-accumulates per image; trained 3 epochs on all 60,000 images, seeded, then cached),
its copy pruned by half, and a half-width student distilled from it: one bundle built by
`HardwareAdapter.fit(model, x, y, prune=0.5, distill=0.5)`, every scheme of the three
architectures timed together in interleaved rounds (LiteRT and ONNX Runtime, 1 thread,
batch 1). Prints each architecture's parameters, MACs, accuracy on the 1,000 held-out images
and fp32/int8 latency, then checks: the base fp32 costs >= 0.5 ms; the student's cheapest
int8 is >= 4x cheaper than the base fp32 of the same format at <= 2 points accuracy loss (at
one thread, wall time per inference is its CPU time); the bundle job takes <= 5 minutes
(training the base model excluded).
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
from lepton_edge.shared.manifest import Manifest, Precision  # noqa: E402

BUNDLE = CACHE / "fashion_mnist_wide"


def wide_model() -> object:
    """The wide CNN, trained once (seeded) and cached as a .keras file."""
    import keras

    cached = CACHE / "fashion_mnist_wide.keras"
    if cached.is_file():
        return keras.models.load_model(cached, compile=False)
    sys.path.insert(0, str(ROOT / "examples" / "fashion_mnist"))
    import train as reference  # examples/fashion_mnist/train.py

    started = time.perf_counter()
    model = reference.train(wide=True)
    print(f"trained the wide CNN in {time.perf_counter() - started:.0f} s")
    cached.parent.mkdir(parents=True, exist_ok=True)
    model.save(cached)
    return model


def wide_bundle() -> tuple[Path, float | None]:
    """The bundle (cached) and how long building it took (None when it came from the cache)."""
    if (BUNDLE / "manifest.json").is_file():
        return BUNDLE, None
    from lepton_edge.controller.factory import HardwareAdapter
    from lepton_edge.shared.idx import fashion_mnist

    model = wide_model()
    images, labels = fashion_mnist("train")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        staging = Path(tmp) / "bundle"
        HardwareAdapter(staging, model_name="fashion-wide", input_scale=1 / 255).fit(
            model, images[..., None], labels.astype(np.int64), prune=0.5, distill=0.5
        )
        took = time.perf_counter() - started
        staging.rename(BUNDLE)
    return BUNDLE, took


def main() -> int:
    bundle, took = wide_bundle()
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_bytes())
    print(f"{'variant':38} {'status':9} {'params':>8} {'M MACs':>7} {'accuracy':>8} {'p50 ms':>7}")
    for v in manifest.variants:
        if v.precision is Precision.FP16 or "dynamic" in v.id or "weight-only" in v.id:
            continue
        print(
            f"{v.id:38} {v.status:9} {v.parameters:>8} {(v.macs or 0) / 1e6:7.2f} "
            f"{v.metrics.accuracy:8.4f} {v.metrics.latency_p50_ms:7.3f}"
        )
    checks = []
    for fmt in ("tflite", "onnx"):
        base = manifest.variant(f"{fmt}-fp32")
        students = [
            v
            for v in manifest.variants
            if v.architecture == "student50"
            and v.format.value == fmt
            and v.precision is Precision.INT8
            and v.status == "accepted"
        ]
        checks.append(
            (
                f"{fmt}: base fp32 {base.metrics.latency_p50_ms:.3f} ms >= 0.5 ms",
                base.metrics.latency_p50_ms >= 0.5,
            )
        )
        if not students:
            checks.append((f"{fmt}: no accepted student int8", False))
            continue
        cheapest = min(students, key=lambda v: v.metrics.latency_p50_ms or float("inf"))
        ratio = base.metrics.latency_p50_ms / cheapest.metrics.latency_p50_ms
        loss = (base.metrics.accuracy - cheapest.metrics.accuracy) * 100
        checks.append(
            (f"{fmt}: {cheapest.id} x{ratio:.2f} cheaper than {base.id} (>= 4)", ratio >= 4)
        )
        checks.append((f"{fmt}: {cheapest.id} loses {loss:.2f} points (<= 2)", loss <= 2))
    if took is not None:
        checks.append((f"prune + distill + every scheme: {took:.0f} s (<= 300)", took <= 300))
    else:
        print("(bundle from the cache: delete it to time the build)")
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
