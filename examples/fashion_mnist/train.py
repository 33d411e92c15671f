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


def build_wide_model() -> Any:
    """A heavier reference where model size matters (about 7.5 M multiply-accumulates per
    image, 60x the seed CNN): Conv 32 -> Conv 32 -> MaxPool -> Conv 64 -> MaxPool -> Dense 128
    -> Dense 10. One chain of layers, so the factory can prune it and derive students."""
    import keras

    return keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv1"),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(64, 3, activation="relu", name="conv3"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="scores"),
        ],
        name="fashion_mnist_wide_cnn",
    )


def train(epochs: int = EPOCHS, limit: int | None = None, wide: bool = False) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    x, y = load_split("train")
    if limit:
        x, y = x[:limit], y[:limit]
    model = build_wide_model() if wide else build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=BATCH_SIZE, shuffle=True, verbose=2)
    return model


def export(model: Any, out_dir: Path) -> dict[str, str]:
    """Write model.onnx and model.tflite; return their sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = keras_export.to_onnx(model, out_dir / "model.onnx")
    tflite_path = keras_export.to_tflite(model, out_dir / "model.tflite")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (onnx_path, tflite_path)}


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
    args = parser.parse_args()
    model = train(args.epochs, args.limit)
    x_test, y_test = load_split("t10k")
    accuracy = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    hashes = export(model, args.out)
    print(json.dumps({"test_accuracy": round(accuracy, 4), "sha256": hashes}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
