"""Bench: int8 and fp16 against fp32 on a MobileNetV2-class model (224x224x3, 1000 classes).

    .venv/bin/python bench/factory_mobilenet.py [--threads 1]

Keras `MobileNetV2(weights=None)` (random weights: nothing is downloaded; speed and size do not
depend on the weights) is converted offline with TensorFlow, then every variant is made with
the factory's own makers and timed as the factory does (all variants of a format in one
fresh process, in interleaved rounds, so that load from other processes on a shared machine
hits every variant alike). Prints, per format, each variant's latency and size as a ratio of
fp32 measured in this one run and the spread of its round medians, and checks the targets:
best int8 latency <= 0.6x fp32, int8 size <= 0.3x, fp16 size <= 0.55x, every spread <= 1.15.
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

from lepton_edge.controller.factory import keras as keras_export  # noqa: E402
from lepton_edge.controller.factory import onnx as onnx_variants  # noqa: E402
from lepton_edge.controller.factory import tflite as tflite_variants  # noqa: E402
from lepton_edge.controller.factory.data import Feeds  # noqa: E402
from lepton_edge.controller.factory.evaluate import (  # noqa: E402
    SpeedBudget,
    measure_speed_isolated,
)
from lepton_edge.shared.manifest import ModelFormat  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calibration", type=int, default=32, help="calibration images")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    args = parser.parse_args()
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    rng = np.random.default_rng(0)
    calib = Feeds((rng.random((args.calibration, 224, 224, 3), dtype=np.float32) * 2 - 1,), (True,))
    budget = SpeedBudget(min_runs=300, max_runs=3000, seconds=10.0, warmup=5, rounds=args.rounds)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        keras_export.to_onnx(model, tmp / "src.onnx")
        keras_export.to_tflite(model, tmp / "src.tflite")
        print(f"converted MobileNetV2 with TensorFlow in {time.perf_counter() - t0:.0f} s")
        fp32 = tmp / "onnx-fp32.onnx"
        makers = {
            ModelFormat.ONNX: {
                "fp32": lambda o: onnx_variants.make_fp32(tmp / "src.onnx", o),
                "fp16": lambda o: onnx_variants.make_fp16(fp32, o),
                "int8-static": lambda o: onnx_variants.make_int8_static(fp32, o, calib),
                "int8-dynamic": lambda o: onnx_variants.make_int8_dynamic(fp32, o),
            },
            ModelFormat.TFLITE: {
                "fp32": lambda o: tflite_variants.make_fp32(tmp / "src.tflite", o),
                "fp16": lambda o: tflite_variants.make_fp16(tmp / "src.tflite", o),
                "int8-static": lambda o: tflite_variants.make_int8_static(
                    tmp / "src.tflite", o, calib
                ),
                "int8-dynamic": lambda o: tflite_variants.make_int8_dynamic(tmp / "src.tflite", o),
                "int8-weight-only": lambda o: tflite_variants.make_int8_weight_only(
                    tmp / "src.tflite", o
                ),
            },
        }
        results: dict[ModelFormat, dict[str, dict[str, float]]] = {}
        for fmt, variants in makers.items():
            paths = {}
            for name, make in variants.items():
                paths[name] = tmp / f"{fmt.value}-{name}.{fmt.value}"
                t0 = time.perf_counter()
                make(paths[name])
                print(f"{fmt.value + '-' + name:23} made in {time.perf_counter() - t0:5.1f} s")
            # As the factory times them: all variants of the format in one fresh process,
            # taking turns round after round, so load from other processes hits all alike.
            results[fmt] = measure_speed_isolated(paths, fmt, calib, args.threads, budget)
            for name, speed in results[fmt].items():
                speed["size"] = paths[name].stat().st_size
    print(
        f"\nratios to fp32 of the same format, one run, threads={args.threads}, latency = p50 "
        f"over {args.rounds} interleaved rounds, spread = max/min of the round medians:"
    )
    checks: list[tuple[str, bool]] = []
    for fmt, by_name in results.items():
        base = by_name["fp32"]
        for name, r in by_name.items():
            if name == "fp32":
                continue
            print(
                f"  {fmt.value + '-' + name:23} latency x{r['latency_p50_ms'] / base['latency_p50_ms']:.2f}"
                f"  size x{r['size'] / base['size']:.2f}  spread {r['latency_spread']:.2f}"
            )
        int8 = {n: r for n, r in by_name.items() if n.startswith("int8")}
        best = min(int8, key=lambda n: int8[n]["latency_p50_ms"])
        ratio = int8[best]["latency_p50_ms"] / base["latency_p50_ms"]
        checks.append(
            (f"{fmt.value}: best int8 ({best}) latency x{ratio:.2f} <= 0.6", ratio <= 0.6)
        )
        size = max(r["size"] for r in int8.values()) / base["size"]
        checks.append((f"{fmt.value}: largest int8 size x{size:.2f} <= 0.3", size <= 0.3))
        fp16 = by_name["fp16"]["size"] / base["size"]
        checks.append((f"{fmt.value}: fp16 size x{fp16:.2f} <= 0.55", fp16 <= 0.55))
        spread = max(r["latency_spread"] for r in by_name.values())
        checks.append((f"{fmt.value}: worst round spread {spread:.2f} <= 1.15", spread <= 1.15))
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
