"""The committed reference models are what examples/fashion_mnist/train.py produces, and the
quantizers are deterministic on them (same input, same bytes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from lepton_edge.controller.factory import onnx as onnx_variants
from lepton_edge.controller.factory import tflite as tflite_variants
from lepton_edge.controller.factory.data import Feeds
from lepton_edge.controller.factory.evaluate import Predictor
from lepton_edge.shared.idx import fashion_mnist
from lepton_edge.shared.manifest import ModelFormat
from tests.paths import FASHION_MNIST_MODELS

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = FASHION_MNIST_MODELS


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_committed_models_match_train_py(tmp_path: Path) -> None:
    """Re-run the whole (deterministic, ~30 s) training and compare with the committed files."""
    pytest.importorskip("tensorflow")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "fashion_mnist" / "train.py"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["test_accuracy"]["model"] >= 0.89
    x, _ = fashion_mnist("t10k")
    x = (x[:1000].astype(np.float32) / 255.0)[..., None]
    for name, fmt in (("model.onnx", ModelFormat.ONNX), ("model.tflite", ModelFormat.TFLITE)):
        fresh = Predictor(tmp_path / name, fmt).predict_all(x)
        committed = Predictor(REFERENCE / name, fmt).predict_all(x)
        # The same model, not the same bytes: TensorFlow's deterministic ops are deterministic
        # per CPU, and three epochs on an AVX2 host drift from the AVX512 one (30 % of the
        # scores differ by more than 1e-4) while classifying the same images the same way.
        agreement = float((fresh.argmax(1) == committed.argmax(1)).mean())
        assert agreement >= 0.95, f"{name}: retrained model agrees on {agreement:.1%} only"
        if sha256(tmp_path / name) != sha256(REFERENCE / name):
            print(f"{name}: same predictions, different bytes (another CPU's rounding?)")


def test_committed_models_are_the_seed_cnn() -> None:
    session = ort.InferenceSession(str(REFERENCE / "model.onnx"))
    assert session.get_inputs()[0].shape == ["batch", 28, 28, 1]
    assert session.get_outputs()[0].shape == ["batch", 10]
    model = onnx_variants.load(REFERENCE / "model.onnx")
    shapes = sorted(tuple(t.dims) for t in model.graph.initializer if len(t.dims) >= 2)
    assert (64, 10) in shapes and (5408, 64) in shapes  # 13*13*32 -> Dense 64 -> Dense 10
    assert any(len(s) == 4 and 32 in s and s.count(3) == 2 for s in shapes)  # Conv 32 3x3
    x, y = fashion_mnist("t10k")
    x = (x.astype(np.float32) / 255.0)[..., None]
    accuracy = {
        fmt: float(
            np.mean(Predictor(REFERENCE / f"model.{fmt.value}", fmt).predict_all(x).argmax(1) == y)
        )
        for fmt in ModelFormat
    }
    assert accuracy[ModelFormat.ONNX] >= 0.89
    assert accuracy[ModelFormat.ONNX] == pytest.approx(accuracy[ModelFormat.TFLITE], abs=0.001)


def test_committed_large_model_and_its_student() -> None:
    """`train.py --large` (9 minutes of training: not re-run here): the large CNN and its
    half-width student, the same network in both formats, with the figures the README gives."""
    x, y = fashion_mnist("t10k")
    x, y = (x[:2000].astype(np.float32) / 255.0)[..., None], y[:2000]
    figures = {}
    for stem in ("large", "large-student50"):
        scores = {
            fmt: Predictor(REFERENCE / f"{stem}.{fmt.value}", fmt).predict_all(x)
            for fmt in ModelFormat
        }
        onnx_top, tflite_top = (scores[fmt].argmax(1) for fmt in ModelFormat)
        assert float(np.mean(onnx_top == tflite_top)) >= 0.999, stem
        assert float(np.mean(onnx_top == y)) >= 0.89, stem
        figures[stem] = onnx_variants.figures(onnx_variants.load(REFERENCE / f"{stem}.onnx"))
    assert figures["large"] == (549930, 36879744)  # 37 M MACs: conv 32, 96, 128, 128; dense 128
    params, macs = figures["large-student50"]  # half the filters and units: about a quarter
    assert macs is not None and 0.2 < macs / 36879744 < 0.3 and params < 549930 / 3


def test_quantizers_are_deterministic(tmp_path: Path) -> None:
    x, _ = fashion_mnist("train")
    calib = Feeds(((x[:200].astype(np.float32) / 255.0)[..., None],), (True,))
    source = REFERENCE / "model.tflite"
    makers = {
        "fp16": lambda out: tflite_variants.make_fp16(source, out),
        "dynamic": lambda out: tflite_variants.make_int8_dynamic(source, out),
        "weight_only": lambda out: tflite_variants.make_int8_weight_only(source, out),
        "static": lambda out: tflite_variants.make_int8_static(source, out, calib),
        "onnx_fp32": lambda out: onnx_variants.make_fp32(REFERENCE / "model.onnx", out),
    }
    for name, make in makers.items():
        make(tmp_path / f"{name}-1.bin")
        make(tmp_path / f"{name}-2.bin")
        assert sha256(tmp_path / f"{name}-1.bin") == sha256(tmp_path / f"{name}-2.bin"), name
    fp32 = tmp_path / "onnx_fp32-1.bin"
    for name, make in {
        "onnx_fp16": lambda out: onnx_variants.make_fp16(fp32, out),
        "onnx_static": lambda out: onnx_variants.make_int8_static(fp32, out, calib),
        "onnx_dynamic": lambda out: onnx_variants.make_int8_dynamic(fp32, out),
    }.items():
        make(tmp_path / f"{name}-1.bin")
        make(tmp_path / f"{name}-2.bin")
        assert sha256(tmp_path / f"{name}-1.bin") == sha256(tmp_path / f"{name}-2.bin"), name


def test_macs_are_unknown_rather_than_undercounted() -> None:
    """A product of two activations (attention) or of computed weights has no stored kernel
    to count: the figure is None, not a smaller number."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])
    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),  # stored weights: 4 * 8 * 8
            helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["h", "ht"], ["y"]),  # two activations
        ],
        "attention",
        [x],
        [y],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert onnx_variants.figures(model) == (64, None)
    model.graph.node.pop()  # without the activation product: counted
    model.graph.node.pop()
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 4, 8]))
    assert onnx_variants.figures(model) == (64, 4 * 8 * 8)
