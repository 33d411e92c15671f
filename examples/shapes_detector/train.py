"""Train the reference detector on rendered shapes and export it as fp32 ONNX and TFLite.

    .venv/bin/python examples/shapes_detector/train.py   # writes controller/demo/reference/detector.*

A single-shot, anchor-free detector (CenterNet-like): five 3x3 convolutions (stride 2, 2, 2)
over a 128x128 RGB image in [0, 1] to a 16x16 grid; each cell predicts three class scores
(sigmoid) and a box (centre offset in the cell, width and height relative to the image). The
exported graph decodes the boxes itself, so the model has the two outputs of the manifest's
`boxes_scores` decoding: `boxes` (1, 256, 4) x1, y1, x2, y2 normalized and `scores`
(1, 256, 3). Data: `lepton_edge.controller.demo.shapes.render` (seeded); seed fixed and
TensorFlow's deterministic ops on. The files are committed so that tests and the demo need
no TensorFlow.
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

from lepton_edge.controller.demo import shapes  # noqa: E402
from lepton_edge.controller.factory import keras as keras_export  # noqa: E402

SEED = 20261202
GRID = 16
TRAIN_IMAGES = 6000
EPOCHS = 12
BATCH_SIZE = 32
#: Seeds of the rendered splits (the factory's tests and bench evaluate on TEST_SEED).
TRAIN_SEED, TEST_SEED = 1, 2


def targets(boxes: list[np.ndarray]) -> np.ndarray:
    """Per image (GRID * GRID, 8): class one-hot (3), centre offset in its cell (2), width and
    height over the image (2), 1 where an object's centre falls."""
    out = np.zeros((len(boxes), GRID * GRID, 8), dtype=np.float32)
    cell = shapes.SIZE / GRID
    for n, rows in enumerate(boxes):
        for x1, y1, x2, y2, c in rows:
            cx, cy = (x1 + x2) / 2 / cell, (y1 + y2) / 2 / cell
            i = int(cy) * GRID + int(cx)
            out[n, i, int(c)] = 1
            out[n, i, 3:5] = cx - int(cx), cy - int(cy)
            out[n, i, 5:7] = (x2 - x1) / shapes.SIZE, (y2 - y1) / shapes.SIZE
            out[n, i, 7] = 1
    return out


def build(keras: Any) -> tuple[Any, Any]:
    """(training model with raw outputs, export model with decoded boxes and scores)."""
    image = keras.Input((shapes.SIZE, shapes.SIZE, 3), name="image")
    x = image
    for filters, stride in ((32, 2), (64, 2), (96, 2), (128, 1), (128, 1)):
        x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", activation="relu")(x)
    raw = keras.layers.Conv2D(7, 1, name="head")(x)
    raw = keras.layers.Reshape((GRID * GRID, 7), name="cells")(raw)
    train_model = keras.Model(image, raw, name="shapes_detector_train")
    return train_model, decoded(keras, train_model)


def decoded(keras: Any, train_model: Any) -> Any:
    """The export model: `train_model`'s raw cells decoded to boxes and scores."""
    ops = keras.ops
    image = keras.Input((shapes.SIZE, shapes.SIZE, 3), name="image")
    raw = train_model(image)
    gy, gx = np.mgrid[0:GRID, 0:GRID].astype(np.float32)
    offsets = np.stack([gx.ravel(), gy.ravel()], axis=1)[None]
    centre = (ops.sigmoid(raw[..., 0:2]) + offsets) / GRID
    size = ops.sigmoid(raw[..., 2:4])
    boxes = ops.concatenate([centre - size / 2, centre + size / 2], axis=-1)
    boxes = keras.layers.Identity(name="boxes")(boxes)
    scores = keras.layers.Activation("sigmoid", name="scores")(raw[..., 4:7])
    return keras.Model(image, [boxes, scores], name="shapes_detector")


def loss(keras: Any) -> Any:
    ops = keras.ops

    def detector_loss(y: Any, raw: Any) -> Any:
        positive = y[..., 7]
        bce = keras.losses.binary_crossentropy(
            y[..., 0:3, None], raw[..., 4:7, None], from_logits=True
        )
        p = ops.sigmoid(raw[..., 4:7])
        focal = ops.mean(bce * ops.square(ops.abs(y[..., 0:3] - p)), axis=-1) * 20
        centre = ops.sum(ops.abs(ops.sigmoid(raw[..., 0:2]) - y[..., 3:5]), axis=-1)
        size = ops.sum(ops.abs(ops.sigmoid(raw[..., 2:4]) - y[..., 5:7]), axis=-1) * 4
        return focal + positive * (centre + size)

    return detector_loss


def training_data(images: int) -> tuple[np.ndarray, np.ndarray]:
    x, boxes = shapes.render(images, TRAIN_SEED)
    return x.astype(np.float32) / 255.0, targets(boxes)


def train(epochs: int, images: int) -> tuple[Any, Any]:
    """(training model, export model), trained from the seed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    x, y = training_data(images)
    train_model, export_model = build(keras)
    train_model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss(keras))
    train_model.fit(x, y, epochs=epochs, batch_size=BATCH_SIZE, shuffle=True, verbose=2)
    return train_model, export_model


def student(teacher: Any, width: float, epochs: int, images: int, alpha: float = 0.5) -> Any:
    """A `width` student of the trained detector (`teacher`: its training model), its head
    distilled by the factory's code (alpha = 0: the same student on the labels alone); returns
    its export model."""
    import keras

    from lepton_edge.controller.factory import distill

    x, y = training_data(images)
    narrow = distill.derive_student(teacher, width)
    distill.distill_heads(
        teacher,
        narrow,
        x,
        y,
        task_loss=loss(keras),
        match=keras.ops.sigmoid,  # every raw channel is read through a sigmoid
        alpha=alpha,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        learning_rate=2e-3,
        seed=SEED,
    )
    return decoded(keras, narrow)


def name_outputs(path: Path, names: tuple[str, ...] = ("boxes", "scores")) -> Path:
    """Give the ONNX outputs the names the model description uses (the exporter numbers
    them); the TFLite file keeps its signature's names, matched by position."""
    import onnx

    model = onnx.load(str(path))
    renames = {o.name: n for o, n in zip(model.graph.output, names, strict=True)}
    for node in model.graph.node:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    for output in model.graph.output:
        output.name = renames[output.name]
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def export(model: Any, out_dir: Path, stem: str = "detector") -> dict[str, str]:
    """Write <stem>.onnx and <stem>.tflite; return their sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = name_outputs(keras_export.to_onnx(model, out_dir / f"{stem}.onnx"))
    tflite_path = keras_export.to_tflite(model, out_dir / f"{stem}.tflite")
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
    parser.add_argument("--images", type=int, default=TRAIN_IMAGES)
    parser.add_argument(
        "--student",
        type=float,
        default=None,
        help="also distil a student of this width (e.g. 0.5: detector-student50.*)",
    )
    args = parser.parse_args()
    teacher, model = train(args.epochs, args.images)
    hashes = export(model, args.out)
    if args.student:
        narrow = student(teacher, args.student, args.epochs, args.images)
        hashes |= export(narrow, args.out, f"detector-student{round(args.student * 100)}")
    print(json.dumps({"sha256": hashes}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
