"""Bench: per-inference time through the engine vs a bare runtime loop (goal <= 1.05x).

    .venv/bin/python bench/engine_overhead.py [--threads 1] [--frames 20] [--rounds 25]

MobileNetV2-class models (Keras `MobileNetV2(weights=None)`, random weights, nothing
downloaded), fp32 and static int8, ONNX Runtime and LiteRT, made with the variant factory's
own makers and cached in ~/.cache/lepton/bench (delete it to rebuild; needs TensorFlow once).
Both loops use the same runtime object and the same frames; short rounds alternate bare and
engine so machine noise hits both alike; the figure is the ratio of the fastest rounds (the least
disturbed, as `timeit` does), with process CPU time per frame beside it, all from one run.
The reference Fashion-MNIST CNN (tens of microseconds per inference) is shown for information:
there the fixed per-frame cost of the loop is a visible share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from lepton_edge.agent.engine import Engine, VariantSpec  # noqa: E402
from lepton_edge.agent.runtimes import RuntimeOptions  # noqa: E402
from lepton_edge.agent.sources import ArraySource, NoFrames  # noqa: E402

CACHE = Path(os.environ.get("LEPTON_BENCH_CACHE", Path.home() / ".cache" / "lepton" / "bench"))


def mobilenet_variants(calib_n: int = 32) -> dict[str, Path]:
    """fp32 and int8-static MobileNetV2 in both formats, built once and cached."""
    out = CACHE / "mobilenet_v2"
    files = {
        "onnx-fp32": out / "onnx-fp32.onnx",
        "onnx-int8-static": out / "onnx-int8-static.onnx",
        "tflite-fp32": out / "tflite-fp32.tflite",
        "tflite-int8-static": out / "tflite-int8-static.tflite",
    }
    if all(p.is_file() for p in files.values()):
        return files
    import keras

    from lepton_edge.controller.factory import keras as keras_export
    from lepton_edge.controller.factory import onnx as onnx_variants
    from lepton_edge.controller.factory import tflite as tflite_variants

    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    calib = np.random.default_rng(0).random((calib_n, 224, 224, 3), dtype=np.float32) * 2 - 1
    t0 = time.perf_counter()
    keras_export.to_onnx(model, out / "src.onnx")
    keras_export.to_tflite(model, out / "src.tflite")
    onnx_variants.make_fp32(out / "src.onnx", files["onnx-fp32"])
    onnx_variants.make_int8_static(files["onnx-fp32"], files["onnx-int8-static"], calib)
    tflite_variants.make_fp32(out / "src.tflite", files["tflite-fp32"])
    tflite_variants.make_int8_static(out / "src.tflite", files["tflite-int8-static"], calib)
    print(f"built MobileNetV2 variants in {time.perf_counter() - t0:.0f} s (cached in {out})")
    return files


def fashion_variants() -> dict[str, Path]:
    from tests.agent.inference_bundle import build_small_bundle

    out = CACHE / "fashion_mnist"
    if not (out / "manifest.json").is_file():
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        build_small_bundle(out)
    from lepton_edge.shared.manifest import Manifest

    manifest = Manifest.model_validate_json((out / "manifest.json").read_bytes())
    return {v.id: out / v.filename for v in manifest.variants}


def measure(path: Path, vid: str, threads: int, frames: int, rounds: int) -> dict[str, float]:
    """Per-inference seconds, bare loop vs through the engine: the fastest round's wall time
    (the round least disturbed by other work on the box) and process CPU time per frame."""
    engine = Engine(NoFrames(), fps=None, options=RuntimeOptions(threads=threads), warmup_runs=5)
    engine.load(VariantSpec(vid, path))
    rt = engine._rt
    assert rt is not None
    shape = rt.input_shape()
    x = np.random.default_rng(1).random((8, *shape), dtype=np.float32)
    batches = [x[i : i + 1] for i in range(len(x))]
    wall: dict[str, list[float]] = {"bare": [], "engine": []}
    cpu: dict[str, list[float]] = {"bare": [], "engine": []}
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(frames):
            rt.run(batches[i % 8])
        wall["bare"].append((time.perf_counter() - t0) / frames)
        cpu["bare"].append((time.process_time() - c0) / frames)
        engine.source = ArraySource(x, limit=frames)
        t0, c0 = time.perf_counter(), time.process_time()
        engine.start()
        engine.wait()
        wall["engine"].append((time.perf_counter() - t0) / frames)
        cpu["engine"].append((time.process_time() - c0) / frames)
        assert engine.stats().frames == frames
    engine.close()
    return {
        "bare": min(wall["bare"]),
        "engine": min(wall["engine"]),
        "bare_cpu": statistics.median(cpu["bare"]),
        "engine_cpu": statistics.median(cpu["engine"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frames", type=int, default=20, help="MobileNet frames per round")
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    rows = []

    def show(name: str, m: dict[str, float], checked: bool) -> None:
        rows.append((name, m, checked))
        print(
            f"{name:<36} bare {m['bare'] * 1e3:8.3f} ms  engine {m['engine'] * 1e3:8.3f} ms"
            f"  (cpu {m['bare_cpu'] * 1e3:8.3f} / {m['engine_cpu'] * 1e3:8.3f} ms)",
            flush=True,
        )

    for vid, path in mobilenet_variants().items():
        show(
            f"mobilenet_v2 {vid}", measure(path, vid, args.threads, args.frames, args.rounds), True
        )
    fm = fashion_variants()
    for vid in ("onnx-fp32", "tflite-fp32", "tflite-int8-static"):
        show(f"fashion_mnist {vid}", measure(fm[vid], vid, args.threads, 2000, args.rounds), False)
    print(f"\nengine / bare per-inference time, one run, threads={args.threads}:")
    ok = True
    for name, m, checked in rows:
        ratio = m["engine"] / m["bare"]
        cpu_ratio = m["engine_cpu"] / m["bare_cpu"]
        verdict = "info"
        if checked:
            ok &= ratio <= 1.05
            verdict = "PASS" if ratio <= 1.05 else "FAIL"
        print(
            f"{verdict}  {name:<36} wall x{ratio:.3f}  cpu x{cpu_ratio:.3f}"
            f"  ({(m['engine'] - m['bare']) * 1e6:+.1f} us/frame)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
