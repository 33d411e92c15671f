"""Bench: the reference detector's bundle (both formats, every variant) built and measured,
and the Fashion-MNIST bundle beside it.

    .venv/bin/python bench/factory_detector.py [--threads 1]

Prints each detector variant's mAP@0.5 and mAP@0.5:0.95 on 500 rendered test images (with
their ground-truth boxes), its agreement with fp32's detections, size and speed (p50 and
the max/min of the timing rounds' medians), then the issue's targets checked against figures
measured in this one run: the best int8 variant's latency <= 0.55x fp32 of the same format,
at <= 1.0 point mAP@0.5 loss; both bundles built and evaluated in <= 120 s; and the detector
built a second time gives the same ladder (build-host timings) for every demo profile.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lepton_edge.controller.demo import shapes  # noqa: E402
from lepton_edge.controller.demo.profiles import PROFILES  # noqa: E402
from lepton_edge.controller.factory import build_bundle  # noqa: E402
from lepton_edge.controller.selection import select  # noqa: E402
from lepton_edge.shared.hardware import HardwareProfile  # noqa: E402
from lepton_edge.shared.idx import FASHION_MNIST_LABELS, fashion_mnist  # noqa: E402
from lepton_edge.shared.manifest import Manifest, Precision  # noqa: E402
from lepton_edge.shared.signing import generate_key  # noqa: E402

REFERENCE = ROOT / "controller" / "demo" / "reference"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    calib, _ = shapes.render(300, seed=3)
    images, boxes = shapes.render(500, seed=2)
    x_train, _ = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")

    def detector(out: Path) -> Manifest:
        return build_bundle(
            out,
            onnx=REFERENCE / "detector.onnx",
            tflite=REFERENCE / "detector.tflite",
            description=REFERENCE / "detector.toml",
            calib_x=calib,
            eval_x=images,
            eval_y=boxes,
            key=generate_key(),
            model_name="shapes-detector",
            threads=args.threads,
        )

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = detector(Path(tmp) / "detector")
        detector_s = time.perf_counter() - start
        fashion = build_bundle(
            Path(tmp) / "fashion",
            onnx=REFERENCE / "model.onnx",
            tflite=REFERENCE / "model.tflite",
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
        again = detector(Path(tmp) / "detector-again")
    print(f"{'variant':26} {'status':8} {'KiB':>6} {'mAP50':>7} {'mAP':>7} {'delta':>7} "
          f"{'agree':>6} {'p50 ms':>7} {'spread':>6} {'x fp32':>6}")  # fmt: skip
    fp32 = {v.format: v for v in manifest.variants if v.precision is Precision.FP32}
    for v in manifest.variants:
        m = v.metrics
        ratio = (m.latency_p50_ms or 0) / (fp32[v.format].metrics.latency_p50_ms or 1)
        print(
            f"{v.id:26} {v.status:8} {v.size_bytes / 1024:6.0f} {m.map50 or 0:7.4f} "
            f"{m.map50_95 or 0:7.4f} {m.metric_delta or 0:+7.2f} {m.agreement or 0:6.3f} "
            f"{m.latency_p50_ms or 0:7.3f} {m.latency_spread or 0:6.2f} {ratio:6.2f}"
        )
    for n in manifest.not_built:
        print(f"{n.id:26} {n.status:8} {n.reason}")
    checks = []
    for fmt, base in fp32.items():
        int8 = [v for v in manifest.accepted() if v.format is fmt and v.precision is Precision.INT8]
        if not int8:
            checks.append((f"{fmt.value}: an accepted int8 variant", False))
            continue
        best = min(int8, key=lambda v: v.metrics.latency_p50_ms or float("inf"))
        ratio = (best.metrics.latency_p50_ms or 0) / (base.metrics.latency_p50_ms or 1)
        loss = -(best.metrics.metric_delta or 0)
        checks += [
            (f"{fmt.value}: {best.id} p50 {ratio:.2f}x fp32 <= 0.55x", ratio <= 0.55),
            (f"{fmt.value}: {best.id} mAP@0.5 loss {loss:.2f} pt <= 1.0 pt", loss <= 1.0),
        ]
    worst_spread = max(v.metrics.latency_spread or 1 for v in manifest.variants)
    checks.append(
        (f"detector + Fashion-MNIST ({len(manifest.variants) + len(fashion.variants)} variants) "
         f"built in {seconds:.1f} s <= 120 s (detector {detector_s:.1f} s)", seconds <= 120)
    )  # fmt: skip
    print(
        f"threads={args.threads}, eval 500 rendered images, calibration 300; worst round "
        f"spread {worst_spread:.2f}; fp32 mAP@0.5 {fp32[next(iter(fp32))].metrics.map50:.4f}"
    )
    differ = []
    for p in PROFILES:
        hw = HardwareProfile(
            arch=p.arch,
            cpu_model=p.cpu_model,
            cores=p.cores,
            features=list(p.features),
            memory_mb=p.memory_mb,
            runtimes={r: "bench" for r in p.runtimes},
        )
        first, second = (select(m, hw).ladder.mapping() for m in (manifest, again))
        if first != second:
            differ.append(f"{p.kind}: {first} vs {second}")
    checks.append(
        (f"built twice: the same ladder for {len(PROFILES) - len(differ)} of {len(PROFILES)} "
         f"demo profiles {differ or ''}", not differ)
    )  # fmt: skip
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
