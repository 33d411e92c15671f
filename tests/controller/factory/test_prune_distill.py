"""Structured pruning and distillation of Keras models, on the seed's CNN trained here on a
slice of Fashion-MNIST (seeded, a few seconds)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepton_edge.controller.factory import distill as distill_mod
from lepton_edge.controller.factory import prune as prune_mod
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import fashion_mnist
from lepton_edge.shared.signing import generate_key

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

pytestmark = pytest.mark.slow
KEY = generate_key()


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
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # the same figures on every run
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
    with pytest.raises(UserError, match="fine-tune classifiers only"):  # float targets
        prune_mod.prune(teacher, x, y.astype(np.float32))
    with pytest.raises(UserError, match="fine-tune classifiers only"):  # a label past the classes
        distill_mod.distill(teacher, distill_mod.derive_student(teacher, 0.5), x, y + 10)
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


@pytest.fixture(scope="module")
def two_architectures(
    teacher: Any, data: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Path]:
    """The seed CNN and its pruned copy in one bundle, via `HardwareAdapter.fit`."""
    from lepton_edge.controller.factory import HardwareAdapter

    x, y, _, _ = data
    out = tmp_path_factory.mktemp("arch") / "bundle"
    pixels = np.round(x * 255).astype(np.uint8)  # as a user has them: uint8 with input_scale
    adapter = HardwareAdapter(
        out, model_name="seed", input_scale=1 / 255, holdout_samples=1000, key=KEY
    )
    # a quarter pruned: the bundle's plumbing is under test here, not how far pruning goes
    adapter.fit(teacher, pixels, y, prune=0.25, epochs=2)
    return adapter.manifest, out


def test_one_bundle_holds_both_architectures(two_architectures: Any) -> None:
    from lepton_edge.controller.factory import load_bundle

    manifest, out = two_architectures
    assert load_bundle(out, KEY.public_key()) == manifest  # signed, every file present
    by_arch: dict[str, list[Any]] = {}
    for v in manifest.variants:
        by_arch.setdefault(v.architecture, []).append(v)
    assert set(by_arch) == {"base", "pruned25"}
    assert {v.id.removeprefix("pruned25-") for v in by_arch["pruned25"]} >= {
        "onnx-fp32",
        "onnx-int8-static",
        "tflite-fp32",
    }
    base = manifest.variant("onnx-fp32")
    pruned = manifest.variant("pruned25-onnx-fp32")
    # conv 26x26x32 outputs of 3x3x1, hidden 5408x64, scores 64x10
    assert (base.parameters, base.macs) == (347146, 26 * 26 * 32 * 9 + 5408 * 64 + 640)
    # 24 of 32 filters and 48 of 64 units kept: 13 * 13 * 24 = 4056 inputs to the hidden layer
    assert pruned.parameters == (24 * 9 + 24) + (4056 * 48 + 48) + (48 * 10 + 10)
    assert pruned.macs == 26 * 26 * 24 * 9 + 4056 * 48 + 480
    # a derived variant's accuracy delta is against the base fp32: what a device gives up
    expected = (pruned.metrics.accuracy - base.metrics.accuracy) * 100
    assert pruned.metrics.accuracy_delta == pytest.approx(expected)
    assert manifest.baseline == {"onnx": "onnx-fp32", "tflite": "tflite-fp32"}
    assert manifest.tolerance is not None and manifest.tolerance.architecture_points == 2.0
    assert pruned.status == "accepted", pruned.reason  # within 2 points of the base


def test_a_ladder_uses_both_architectures(two_architectures: Any) -> None:
    """Fixed figures, as a device class might report them (the pruned model a point less
    accurate than the base, and faster): the base model is the accurate end of the ladder,
    the pruned int8 the cheap end."""
    from lepton_edge.controller.selection import Measured, select
    from lepton_edge.shared.messages import PowerLevel
    from tests.controller.helpers import profile

    manifest, _ = two_architectures
    fixed = manifest.model_copy(deep=True)
    base = fixed.variant("onnx-fp32").metrics.accuracy
    for v in fixed.variants:
        if v.architecture == "pruned25":
            v.metrics.accuracy, v.metrics.accuracy_delta = base - 0.01, -1.0
            v.status, v.reason = "accepted", ""  # whatever the build measured
    measured = {
        "onnx-fp32": Measured(0.6),
        "onnx-int8-static": Measured(0.5),
        "pruned25-onnx-fp32": Measured(0.35),
        "pruned25-onnx-int8-static": Measured(0.25),
    }
    hw = profile(runtimes={"onnxruntime": "1.20"}, features=["avx2"])
    ladder = select(fixed, hw, measured).ladder
    arch = {level: fixed.variant(v).architecture for level, v in ladder.mapping().items()}
    assert arch[PowerLevel.CRITICAL] == "pruned25", ladder
    assert arch[PowerLevel.PERFORMANCE] == "base", ladder
    assert ladder.mapping()[PowerLevel.CRITICAL] == "pruned25-onnx-int8-static"
    # without the architecture allowance the pruned model (1 point down) is out
    assert fixed.tolerance is not None
    fixed.tolerance = fixed.tolerance.model_copy(update={"architecture_points": 0.0})
    fixed.tolerance_points = 0.5
    chosen = set(select(fixed, hw, measured).ladder.mapping().values())
    assert chosen <= {"onnx-fp32", "onnx-int8-static"}, chosen


def test_an_architecture_that_does_not_fit_is_one_line_and_writes_nothing(
    teacher: Any, data: Any, tmp_path: Path
) -> None:
    from lepton_edge.controller.factory import build_bundle

    x, _, xe, ye = data
    other = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(5, name="out")]
    )
    common = {
        "keras": teacher,
        "calib_x": x[:100],
        "eval_x": xe[:200],
        "eval_y": ye[:200],
        "key": KEY,
        "model_name": "seed",
        "skip": ["onnx-fp16", "onnx-int8-dynamic", "openvino-int8", "tflite-fp16"],
    }
    with pytest.raises(UserError, match=r"architecture five: its outputs .* differ from the base"):
        build_bundle(tmp_path / "b", architectures={"five": other}, **common)
    with pytest.raises(UserError, match="architecture name 'Big-One'"):
        build_bundle(tmp_path / "b", architectures={"Big-One": other}, **common)
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left behind


def test_architectures_from_model_files(teacher: Any, data: Any, tmp_path: Path) -> None:
    """The demo's path (no TensorFlow at build time): base and student given as ONNX and
    TFLite files; the student's parameters and MACs are counted from its ONNX graph."""
    from lepton_edge.controller.factory import build_bundle
    from lepton_edge.controller.factory import keras as keras_mod
    from lepton_edge.controller.factory.build import ALL_VARIANTS

    x, _, xe, ye = data
    student = distill_mod.derive_student(teacher, 0.5)
    files = {}
    for name, model in (("base", teacher), ("student", student)):
        files[name] = (
            keras_mod.to_onnx(model, tmp_path / f"{name}.onnx"),
            keras_mod.to_tflite(model, tmp_path / f"{name}.tflite"),
        )
    common = {
        "onnx": files["base"][0],
        "tflite": files["base"][1],
        "calib_x": x[:100],
        "eval_x": xe[:200],
        "eval_y": ye[:200],
        "key": KEY,
        "model_name": "seed",
        "skip": [v for v in ALL_VARIANTS if v not in {"onnx-fp32", "tflite-fp32"}],
    }
    with pytest.raises(UserError, match="architecture student50: no tflite file"):
        build_bundle(
            tmp_path / "b", architectures={"student50": (files["student"][0], None)}, **common
        )
    assert not (tmp_path / "b").exists()
    manifest = build_bundle(tmp_path / "b", architectures={"student50": files["student"]}, **common)
    derived = manifest.variant("student50-onnx-fp32")
    assert derived.architecture == "student50"
    assert manifest.variant("student50-tflite-fp32").architecture == "student50"
    # 16 filters and 32 units: conv 26x26x16 of 3x3x1, hidden 2704x32, scores 32x10
    assert derived.macs == 26 * 26 * 16 * 9 + 2704 * 32 + 320
    # the student is untrained: the exporter leaves out its all-zero biases
    assert derived.parameters == 16 * 9 + 2704 * 32 + 32 * 10
    assert manifest.variant("onnx-fp32").macs == 26 * 26 * 32 * 9 + 5408 * 64 + 640


def test_a_detector_head_is_distilled(data: Any) -> None:
    """`distill_heads` on a dense-prediction model shaped like the reference detector's
    training model (convolutions to a per-cell head, reshaped to (cells, channels)): the
    student ends far closer to the teacher's head outputs than it started."""
    x, _, xe, _ = data
    cells = x.reshape(-1, 7, 4, 7, 4).mean(axis=(2, 4)).reshape(-1, 49, 1)  # per-cell mean

    def head(width: int) -> Any:
        return keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu"),
                keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu"),
                keras.layers.Conv2D(3, 1, name="head"),
                keras.layers.Reshape((49, 3), name="cells"),
            ]
        )

    keras.utils.set_random_seed(0)
    teacher = head(16)
    teacher.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    teacher.fit(x[:3000], np.concatenate([cells, cells**2, -cells], -1)[:3000], epochs=3, verbose=0)
    student = distill_mod.derive_student(teacher, 0.5)
    assert student.layers[0].filters == 8 and student.get_layer("head").filters == 3

    def gap() -> float:
        return float(
            np.mean((student.predict(xe, verbose=0) - teacher.predict(xe, verbose=0)) ** 2)
        )

    before = gap()
    distill_mod.distill_heads(teacher, student, x[:3000], epochs=2, seed=1)
    assert gap() < before / 10, (gap(), before)
    # with the labels and the model's own loss beside the teacher's outputs
    labels = np.concatenate([cells, cells**2, -cells], -1)[:3000]
    distill_mod.distill_heads(
        teacher,
        student,
        x[:3000],
        labels,
        task_loss=keras.losses.MeanSquaredError(reduction=None),
        match=keras.ops.tanh,  # compared through a squashing function, as the detector's are
        epochs=1,
    )
    with pytest.raises(UserError, match="give both y and task_loss"):
        distill_mod.distill_heads(teacher, student, x[:3000], labels, epochs=1)
    with pytest.raises(UserError, match="trains nothing"):
        distill_mod.distill_heads(teacher, student, x[:3000], epochs=0)
    inputs = keras.Input((28, 28, 1))
    flat = keras.layers.Flatten()(inputs)
    two = keras.Model(inputs, [keras.layers.Dense(4)(flat), keras.layers.Dense(2)(flat)])
    with pytest.raises(UserError, match="the teacher has 2 outputs"):
        distill_mod.distill_heads(two, two, x[:3000], epochs=1)
