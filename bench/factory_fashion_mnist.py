"""Bench: the full Fashion-MNIST ladder (both formats, every variant) built and measured.

    .venv/bin/python bench/factory_fashion_mnist.py [--threads 1]

Prints each variant's accuracy on all 10 000 test images, its delta to fp32, size and speed,
then the issue's targets checked against figures measured in this one run: fp32 accuracy
>= 0.89, every accepted int8 variant within 1.0 pt, the whole build under 60 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lepton_edge.controller.factory import build_bundle  # noqa: E402
from lepton_edge.shared.idx import FASHION_MNIST_LABELS, fashion_mnist  # noqa: E402
from lepton_edge.shared.manifest import Precision  # noqa: E402
from lepton_edge.shared.signing import generate_key  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    x_train, _ = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = build_bundle(
            Path(tmp) / "bundle",
            onnx=ROOT / "controller/demo/reference/model.onnx",
            tflite=ROOT / "controller/demo/reference/model.tflite",
            calib_x=x_train[:1000],
            eval_x=x_test,
            eval_y=y_test,
            key=generate_key(),
            model_name="fashion-mnist-cnn",
            labels=FASHION_MNIST_LABELS,
            threads=args.threads,
            input_scale=1 / 255,
        )
        seconds = time.perf_counter() - start
    print(f"{'variant':26} {'status':8} {'KiB':>6} {'acc':>7} {'delta':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'ips@32':>8} {'MiB':>5}")  # fmt: skip
    for v in manifest.variants:
        m = v.metrics
        print(
            f"{v.id:26} {v.status:8} {v.size_bytes / 1024:6.0f} {m.accuracy:7.4f} "
            f"{m.accuracy_delta:+7.2f} {m.latency_p50_ms:7.3f} {m.latency_p99_ms:7.3f} "
            f"{m.throughput_ips:8.0f} {m.peak_memory_mb:5.1f}"
        )
    fp32 = min(v.metrics.accuracy or 0 for v in manifest.variants if v.precision is Precision.FP32)
    int8 = [v for v in manifest.accepted() if v.precision is Precision.INT8]
    worst = min(v.metrics.accuracy_delta or 0 for v in int8)
    checks = [
        (f"fp32 accuracy {fp32:.4f} >= 0.89", fp32 >= 0.89),
        (f"worst accepted int8 delta {worst:+.2f} pt >= -1.0 pt", worst >= -1.0),
        (f"full ladder ({len(manifest.variants)} variants) built in {seconds:.1f} s < 60 s",
         seconds < 60),
    ]  # fmt: skip
    print(f"threads={args.threads}, eval 10000 images, calibration 1000 images")
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
