"""Structured pruning and distillation of Keras models, on the seed's CNN trained here on a
slice of Fashion-MNIST (seeded, a few seconds)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from lepton_edge.controller.factory import distill as distill_mod
from lepton_edge.controller.factory import prune as prune_mod
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import fashion_mnist

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

pytestmark = pytest.mark.slow


def seed_cnn(name: str = "cnn") -> Any:
    """The seed's architecture: Conv 32 3x3 -> MaxPool -> Dense 64 -> Dense 10 softmax."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="scores"),
        ],
        name=name,
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    xs, ys = fashion_mnist("train")
    xt, yt = fashion_mnist("t10k")
    scale = np.float32(1 / 255)
    return (
        xs[:6000, ..., None] * scale,
        ys[:6000].astype(np.int64),
        xt[:2000, ..., None] * scale,
        yt[:2000].astype(np.int64),
    )


@pytest.fixture(scope="module")
def teacher(data: Any) -> Any:
    x, y, _, _ = data
    keras.utils.set_random_seed(0)
    model = seed_cnn("teacher")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return model


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float((model.predict(x, verbose=0).argmax(1) == y).mean())


def test_pruning_keeps_the_largest_filters_and_their_weights(teacher: Any) -> None:
    narrow, report = prune_mod.prune_model(teacher, 0.5)
    assert report.kept == {"conv": (16, 32), "hidden": (32, 64)}
    assert report.skipped == {"scores": "the output layer keeps its size"}
    assert narrow.get_layer("conv").filters == 16 and narrow.get_layer("hidden").units == 32
    before, after = report.parameters
    assert after < 0.55 * before and before == teacher.count_params()
    # the kept filters are the largest by L1 norm, with their own weights and the next
    # layer's matching rows (after Flatten: every spatial position of each kept channel)
    kernel, bias = teacher.get_layer("conv").get_weights()
    norms = np.abs(kernel).sum(axis=(0, 1, 2))
    keep = np.sort(np.argsort(-norms)[:16])
    assert np.array_equal(narrow.get_layer("conv").get_weights()[0], kernel[..., keep])
    assert np.array_equal(narrow.get_layer("conv").get_weights()[1], bias[keep])
    hidden = teacher.get_layer("hidden").get_weights()[0].reshape(13 * 13, 32, 64)
    rows = narrow.get_layer("hidden").get_weights()[0].reshape(13 * 13, 16, 32)
    hidden_keep = np.sort(np.argsort(-np.abs(hidden).sum(axis=(0, 1)))[:32])
    assert np.array_equal(rows, hidden[:, keep][:, :, hidden_keep])


def test_pruned_and_fine_tuned_model_predicts_like_the_teacher(teacher: Any, data: Any) -> None:
    x, y, xe, ye = data
    pruned, report = prune_mod.prune(teacher, x, y, fraction=0.5, epochs=2)
    base, after = accuracy(teacher, xe, ye), accuracy(pruned, xe, ye)
    assert after >= base - 0.02, (base, after, str(report))  # within 2 points
    agree = float(
        (pruned.predict(xe, verbose=0).argmax(1) == teacher.predict(xe, verbose=0).argmax(1)).mean()
    )
    assert agree >= 0.9
    assert "conv 16/32, hidden 32/64" in str(report)


def test_distillation_beats_hard_labels_at_the_same_budget(teacher: Any, data: Any) -> None:
    """Same student, same seed, same optimizer and epochs; only the loss differs."""
    x, y, xe, ye = data
    keras.utils.set_random_seed(2)
    student = distill_mod.derive_student(teacher, 0.25)
    assert student.get_layer("conv").filters == 8 and student.get_layer("hidden").units == 16
    hard = keras.models.clone_model(student)
    hard.set_weights(student.get_weights())
    distill_mod.distill(teacher, student, x[:3000], y[:3000], epochs=2, seed=1)
    distill_mod.distill(teacher, hard, x[:3000], y[:3000], epochs=2, seed=1, alpha=0.0)
    distilled, plain = accuracy(student, xe, ye), accuracy(hard, xe, ye)
    assert distilled > plain, (distilled, plain)


def test_bad_inputs_are_one_line_each(teacher: Any, data: Any) -> None:
    x, y, _, _ = data
    for fraction in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(UserError, match=r"outside \(0, 1\)"):
            prune_mod.prune_model(teacher, fraction)
    with pytest.raises(UserError, match="trains nothing"):
        prune_mod.prune(teacher, x, y, epochs=0)
    with pytest.raises(UserError, match="too few to fine-tune"):
        prune_mod.prune(teacher, x[:50], y[:50])
    with pytest.raises(UserError, match=r"outside \(0, 1\)"):
        distill_mod.derive_student(teacher, 1.0)
    wrong = keras.Sequential(
        [keras.Input((32, 32, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    with pytest.raises(UserError, match=r"student's input shape \(32, 32, 1\) differs"):
        distill_mod.distill(teacher, wrong, x, y)
    # a layer type the pruner cannot follow is named, skipped and reported
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.DepthwiseConv2D(3, name="depthwise"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(16, name="hidden"),
            keras.layers.Dense(10, name="scores"),
        ]
    )
    _narrow, report = prune_mod.prune_model(model, 0.5)
    assert report.kept == {"hidden": (8, 16)}
    assert (
        report.skipped["conv"]
        == "followed by a DepthwiseConv2D layer, which the pruner cannot follow"
    )
    assert report.skipped["depthwise"] == "DepthwiseConv2D layers are not pruned"
    # a residual connection: not one chain
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(16, name="a")(inputs)
    residual = keras.layers.Add(name="add")([inputs, hidden])
    branched = keras.Model(inputs, keras.layers.Dense(4, name="out")(residual))
    with pytest.raises(UserError, match="one chain of layers"):
        prune_mod.prune_model(branched, 0.5)
