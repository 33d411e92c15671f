"""The Fashion-MNIST bundle the inference tests run on: fp32 and int8, ONNX and TFLite.

Uses the factory's session-wide `reference_bundle` fixture when tests/conftest.py has it;
otherwise builds a small unsigned bundle once per session from the committed fp32 models,
quantizing int8 copies itself (ONNX Runtime's static QDQ, ai-edge-quantizer's static int8).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.shared.idx import fashion_mnist
from lepton_edge.shared.manifest import (
    MANIFEST_FILE,
    Manifest,
    ModelFormat,
    Precision,
    Requirements,
    Variant,
)
from lepton_edge.shared.messages import PowerLevel
from tests.paths import FASHION_MNIST_MODELS


@dataclass
class Bundle:
    dir: Path
    manifest: Manifest

    def path(self, variant_id: str) -> Path:
        v = self.manifest.variant(variant_id)
        return self.dir / v.filename

    def ids(self, fmt: str, precision: str) -> list[str]:
        return [
            v.id
            for v in self.manifest.accepted()
            if v.format.value == fmt and v.precision.value == precision
        ]

    def ladder(self, fmt: str = "tflite") -> dict[PowerLevel, str]:
        fp32 = self.ids(fmt, "fp32")[0]
        int8 = sorted(self.ids(fmt, "int8"), key=lambda i: "static" not in i)[0]
        return {
            PowerLevel.PERFORMANCE: fp32,
            PowerLevel.BALANCED: fp32,
            PowerLevel.SAVER: int8,
            PowerLevel.CRITICAL: int8,
        }


def fm_images(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST t10k as the bundle is called: float32 (N, 28, 28, 1) in [0, 1]."""
    x, y = fashion_mnist("t10k")
    if n is not None:
        x, y = x[:n], y[:n]
    return (x.astype(np.float32) / 255.0)[..., None], y.astype(np.int64)


def _calibration(n: int = 200) -> np.ndarray:
    x, _ = fashion_mnist("train")
    return (x[:n].astype(np.float32) / 255.0)[..., None]


def _onnx_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            import onnx

            name = onnx.load(str(src)).graph.input[0].name
            self._it = iter([{name: x[None]} for x in _calibration()])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)


def _tflite_int8(src: Path, dst: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    signature = Interpreter(str(src)).get_signature_list()
    name = next(iter(signature))
    input_name = signature[name]["inputs"][0]
    q = quantizer.Quantizer(str(src))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    calib = q.calibrate({name: [{input_name: x[None]} for x in _calibration()]})
    q.quantize(calib).export_model(str(dst), overwrite=True)


def _variant(vid: str, path: Path, fmt: ModelFormat, precision: Precision) -> Variant:
    from lepton_edge.agent import runtimes

    rt = runtimes.load(path)
    try:
        inputs, outputs = rt.inputs, rt.outputs
    finally:
        rt.close()
    return Variant(
        id=vid,
        format=fmt,
        precision=precision,
        scheme="static" if precision is Precision.INT8 else "none",
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        size_bytes=path.stat().st_size,
        inputs=inputs,
        outputs=outputs,
        requirements=Requirements(runtime="onnxruntime" if fmt is ModelFormat.ONNX else "litert"),
    )


def build_small_bundle(out: Path) -> Bundle:
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir()
    files = {
        ("onnx-fp32", ModelFormat.ONNX, Precision.FP32): FASHION_MNIST_MODELS / "model.onnx",
        ("tflite-fp32", ModelFormat.TFLITE, Precision.FP32): FASHION_MNIST_MODELS / "model.tflite",
    }
    _onnx_int8(FASHION_MNIST_MODELS / "model.onnx", work / "int8.onnx")
    _tflite_int8(FASHION_MNIST_MODELS / "model.tflite", work / "int8.tflite")
    files[("onnx-int8-static", ModelFormat.ONNX, Precision.INT8)] = work / "int8.onnx"
    files[("tflite-int8-static", ModelFormat.TFLITE, Precision.INT8)] = work / "int8.tflite"
    variants = []
    for (vid, fmt, precision), src in files.items():
        v = _variant(vid, src, fmt, precision)
        shutil.copyfile(src, out / f"{v.sha256}.{fmt.value}")
        variants.append(v)
    shutil.rmtree(work)
    manifest = Manifest(
        bundle_id="fm-test",
        model_name="fashion_mnist_cnn",
        version="test",
        created_at=time.time(),
        num_classes=10,
        baseline={ModelFormat.ONNX: "onnx-fp32", ModelFormat.TFLITE: "tflite-fp32"},
        variants=variants,
    )
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return Bundle(out, manifest)


@pytest.fixture(scope="session")
def fm_bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The reference bundle (factory's fixture) or, until it exists, a small one built here."""
    try:
        ref = request.getfixturevalue("reference_bundle")
    except pytest.FixtureLookupError:
        return build_small_bundle(tmp_path_factory.mktemp("fm_bundle"))
    return Bundle(Path(ref.dir), ref.manifest)
