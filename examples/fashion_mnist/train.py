"""Train the seed's reference CNN on Fashion-MNIST and export it as fp32 ONNX and TFLite.

    .venv/bin/python examples/fashion_mnist/train.py   # writes controller/demo/reference/model.*

Conv2D 32 3x3 relu -> MaxPool 2x2 -> Flatten -> Dense 64 relu -> Dense 10 softmax, 3 epochs,
seed fixed and TensorFlow's deterministic ops on, input float32 (N, 28, 28, 1) in [0, 1].
The two files are committed (in the demo package, so an installed demo has them) and so
the demo and the tests need no TensorFlow;
tests/controller/factory/test_reference_model.py checks they are what this script exports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing

from lepton_edge.controller.factory import keras as keras_export  # noqa: E402
from lepton_edge.shared.idx import fashion_mnist  # noqa: E402

SEED = 20240607
EPOCHS = 3
BATCH_SIZE = 64
STUDENT_WIDTH = 0.5
STUDENT_EPOCHS = 3


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (N, 28, 28, 1) in [0, 1] and labels as int64 (N,)."""
    images, labels = fashion_mnist(split)
    return (images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int64)


def build_model() -> Any:
    import keras

    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="scores"),
        ],
        name="fashion_mnist_cnn",
    )


def build_large_model() -> Any:
    """The reference where model size matters (37 M multiply-accumulates per image, about
    0.7 ms on one core, 1,300x the seed CNN's work): Conv 32 -> Conv 96 -> MaxPool -> Conv 128
    -> Conv 128 -> MaxPool -> Dense 128 -> Dense 10. One chain of layers, so the factory can
    prune it and derive students from it."""
    import keras

    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv1"),
            keras.layers.Conv2D(96, 3, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(128, 3, activation="relu", name="conv3"),
            keras.layers.Conv2D(128, 3, activation="relu", name="conv4"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="scores"),
        ],
        name="fashion_mnist_large_cnn",
    )


def train(epochs: int = EPOCHS, limit: int | None = None, large: bool = False) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    x, y = load_split("train")
    if limit:
        x, y = x[:limit], y[:limit]
    model = build_large_model() if large else build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=BATCH_SIZE, shuffle=True, verbose=2)
    return model


def export(model: Any, out_dir: Path, stem: str = "model") -> dict[str, str]:
    """Write <stem>.onnx and <stem>.tflite; return their sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = keras_export.to_onnx(model, out_dir / f"{stem}.onnx")
    tflite_path = keras_export.to_tflite(model, out_dir / f"{stem}.tflite")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (onnx_path, tflite_path)}


def distil_student(teacher: Any, limit: int | None = None) -> Any:
    """The large model's half-width student, distilled by the factory's own code."""
    from lepton_edge.controller.factory import distill

    x, y = load_split("train")
    if limit:
        x, y = x[:limit], y[:limit]
    student = distill.derive_student(teacher, STUDENT_WIDTH)
    return distill.distill(teacher, student, x, y, epochs=STUDENT_EPOCHS, seed=SEED)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE.parents[1] / "controller" / "demo" / "reference",
        help="folder for the model files",
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images")
    parser.add_argument(
        "--large",
        action="store_true",
        help="the large reference and its distilled student (large.*, large-student50.*)",
    )
    args = parser.parse_args()
    x_test, y_test = load_split("t10k")
    models = {"model": train(args.epochs, args.limit)} if not args.large else {}
    if args.large:
        models["large"] = train(args.epochs, args.limit, large=True)
        models["large-student50"] = distil_student(models["large"], args.limit)
    report: dict[str, Any] = {"test_accuracy": {}, "sha256": {}}
    for stem, model in models.items():
        scores = model.predict(x_test, verbose=0)
        report["test_accuracy"][stem] = round(float((scores.argmax(1) == y_test).mean()), 4)
        report["sha256"] |= export(model, args.out, stem)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
