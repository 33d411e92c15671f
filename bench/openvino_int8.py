"""Bench: OpenVINO int8 (NNCF) against ONNX Runtime int8 (static QDQ) on MobileNetV2 and on
the project's reference detector, both from the same fp32 ONNX graph.

    .venv/bin/python bench/openvino_int8.py [--threads 1] [--rounds 10]

MobileNetV2 is Keras `MobileNetV2(weights=None)` (random weights: nothing is downloaded; speed
does not depend on the weights), exported offline with TensorFlow. Each model's four variants
(ONNX Runtime fp32 and int8, OpenVINO fp32 and int8, OpenVINO always with the f32 precision
hint) are timed as the factory times them: in one fresh process, in interleaved rounds, so load
from other processes hits all alike. Prints each latency and its ratio to ONNX Runtime fp32, and
which int8 selection would take on this CPU (the faster one). No goal: measured, and selected
on merit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from lepton_edge.controller.demo import shapes  # noqa: E402
from lepton_edge.controller.factory import onnx as onnx_variants  # noqa: E402
from lepton_edge.controller.factory import openvino as openvino_variants  # noqa: E402
from lepton_edge.controller.factory.data import Feeds  # noqa: E402
from lepton_edge.controller.factory.evaluate import (  # noqa: E402
    SpeedBudget,
    measure_speed_isolated,
)
from lepton_edge.shared.manifest import ModelFormat  # noqa: E402

REFERENCE = ROOT / "controller" / "demo" / "reference"


def mobilenet(out: Path) -> Feeds:
    import keras

    from lepton_edge.controller.factory import keras as keras_export

    keras.utils.set_random_seed(0)
    keras_export.to_onnx(keras.applications.MobileNetV2(weights=None), out)
    rng = np.random.default_rng(0)
    return Feeds((rng.random((32, 224, 224, 3), dtype=np.float32) * 2 - 1,), (True,))


def detector(out: Path) -> Feeds:
    out.write_bytes((REFERENCE / "detector.onnx").read_bytes())
    images, _ = shapes.render(100, seed=3)
    return Feeds((images.astype(np.float32) / 255,), (True,))


def measure(name: str, source: Path, calib: Feeds, threads: int, rounds: int) -> dict[str, float]:
    work = source.parent
    fp32 = work / f"{name}-fp32.onnx"
    paths = {
        "onnxruntime fp32": fp32,
        "onnxruntime int8": work / f"{name}-ort-int8.onnx",
        "openvino fp32": fp32,
        "openvino int8": work / f"{name}-ov-int8.onnx",
    }
    t0 = time.perf_counter()
    onnx_variants.make_fp32(source, fp32)
    onnx_variants.make_int8_static(fp32, paths["onnxruntime int8"], calib)
    made_ort = time.perf_counter() - t0
    t0 = time.perf_counter()
    openvino_variants.make_int8(fp32, paths["openvino int8"], calib)
    made_ov = time.perf_counter() - t0
    print(f"{name}: ONNX Runtime int8 made in {made_ort:.1f} s, NNCF int8 in {made_ov:.1f} s")
    runtimes = {k: "openvino" for k in paths if k.startswith("openvino")}
    budget = SpeedBudget(min_runs=100, max_runs=2000, seconds=8.0, warmup=5, rounds=rounds)
    speed = measure_speed_isolated(paths, ModelFormat.ONNX, calib, threads, budget, runtimes)
    return {k: v["latency_p50_ms"] for k, v in speed.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        results = {}
        for name, make in (("mobilenetv2", mobilenet), ("detector", detector)):
            source = tmp / f"{name}.onnx"
            calib = make(source)
            results[name] = measure(name, source, calib, args.threads, args.rounds)
    print(
        f"\nlatency p50 at batch 1, threads={args.threads}, one run, {args.rounds} interleaved "
        "rounds; ratio to ONNX Runtime fp32 of the same model:"
    )
    for name, by_variant in results.items():
        base = by_variant["onnxruntime fp32"]
        for variant, ms in by_variant.items():
            print(f"  {name:12} {variant:17} {ms:8.3f} ms  x{ms / base:.2f}")
        ort, ov = by_variant["onnxruntime int8"], by_variant["openvino int8"]
        faster = "openvino int8" if ov < ort else "onnxruntime int8"
        print(
            f"  {name:12} selection on this CPU would take {faster} (x{max(ort, ov) / min(ort, ov):.2f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
