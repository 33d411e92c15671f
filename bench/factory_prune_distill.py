"""Bench: structured pruning and distillation of the seed's CNN (Keras, TensorFlow on CPU).

    .venv/bin/python bench/factory_prune_distill.py [--train 6000] [--epochs 2]

Trains the seed CNN (Conv 32 3x3 -> MaxPool -> Dense 64 -> Dense 10) for 3 epochs on the first
`--train` Fashion-MNIST images (seeded), then prints, on 2,000 test images: the teacher's
accuracy; the model pruned by half (L1 norm) and fine-tuned for `--epochs`, with its parameter
count; a quarter-width student trained for `--epochs` on half the images from the teacher
(temperature 2 and 4) and from the hard labels alone (same student, seed and budget); and the
wall time of that part. With `--bundle`, then also the whole job on all 60,000 training images:
`HardwareAdapter.fit(model, prune=True, distill=True)`, pruning, distilling and building every
scheme of all three architectures into one bundle, timed against the goal of 5 minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from lepton_edge.controller.factory import distill, prune  # noqa: E402
from lepton_edge.shared.idx import fashion_mnist  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6000, help="training images")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning / student epochs")
    parser.add_argument("--bundle", action="store_true", help="also time the whole bundle job")
    args = parser.parse_args()
    import keras

    started = time.perf_counter()
    xs, ys = fashion_mnist("train")
    xt, yt = fashion_mnist("t10k")
    x, y = xs[: args.train, ..., None] / np.float32(255), ys[: args.train].astype(np.int64)
    xe, ye = xt[:2000, ..., None] / np.float32(255), yt[:2000].astype(np.int64)

    def accuracy(model: object) -> float:
        return float((model.predict(xe, verbose=0).argmax(1) == ye).mean())  # type: ignore[attr-defined]

    keras.utils.set_random_seed(0)
    sys.path.insert(0, str(ROOT / "examples" / "fashion_mnist"))
    import train as reference  # examples/fashion_mnist/train.py: the seed CNN

    teacher = reference.build_model()
    teacher.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    teacher.fit(x, y, epochs=3, batch_size=64, verbose=0)
    base = accuracy(teacher)
    print(f"teacher            accuracy {base:.4f}  parameters {teacher.count_params()}")

    pruned, report = prune.prune(teacher, x, y, fraction=0.5, epochs=args.epochs)
    print(f"pruned 50 %        accuracy {accuracy(pruned):.4f}  parameters {report.parameters[1]}")
    print(f"  {report}")

    keras.utils.set_random_seed(2)
    student = distill.derive_student(teacher, 0.25)
    half = len(x) // 2
    for label, options in (
        ("distilled T=2 a=0.5", {"temperature": 2.0, "alpha": 0.5}),
        ("distilled T=4 a=0.7", {"temperature": 4.0, "alpha": 0.7}),
        ("hard labels only   ", {"alpha": 0.0}),
    ):
        copy = keras.models.clone_model(student)
        copy.set_weights(student.get_weights())
        distill.distill(teacher, copy, x[:half], y[:half], epochs=args.epochs, seed=1, **options)
        print(
            f"student 25 % {label} accuracy {accuracy(copy):.4f}  parameters {copy.count_params()}"
        )
    print(f"wall time {time.perf_counter() - started:.0f} s (teacher training included)")
    if not args.bundle:
        return 0
    import tempfile

    from lepton_edge.controller.factory import HardwareAdapter

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        adapter = HardwareAdapter(Path(tmp) / "bundle", model_name="seed", input_scale=1 / 255)
        adapter.fit(teacher, xs[..., None], ys.astype(np.int64), prune=True, distill=True)
        took = time.perf_counter() - started
    assert adapter.manifest is not None
    for v in adapter.manifest.variants:
        if v.id.endswith(("tflite-fp32", "tflite-int8-static")):
            print(
                f"  {v.id:34} {v.status:9} accuracy {v.metrics.accuracy:.4f}  "
                f"p50 {v.metrics.latency_p50_ms:.4f} ms  {v.parameters} parameters"
            )
    ok = took <= 300
    print(
        f"{'PASS' if ok else 'FAIL'}  prune + distill + every scheme of 3 architectures on "
        f"60,000 images: {took:.0f} s (<= 300)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
