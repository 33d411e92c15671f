"""The reference bundle: every variant present, signed, and its metrics recomputed here."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter

from lepton_edge.controller.factory import load_bundle
from lepton_edge.shared.errors import SignatureError
from lepton_edge.shared.idx import fashion_mnist
from lepton_edge.shared.manifest import MANIFEST_FILE, Manifest, ModelFormat, Precision
from lepton_edge.shared.signing import generate_key, load_public_key

EXPECTED = {
    "onnx-fp32",
    "onnx-fp16",
    "onnx-int8-dynamic",
    "tflite-fp32",
    "tflite-fp16",
    "tflite-int8-dynamic",
    "tflite-int8-weight-only",
}


def run_plain(path: Path, fmt: ModelFormat, x: np.ndarray, runtime: str = "") -> np.ndarray:
    """Scores straight from the runtime, one image at a time (no factory code)."""
    if runtime == "openvino":
        import openvino

        compiled = openvino.Core().compile_model(
            str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
        )
        return np.concatenate([compiled(x[i : i + 1])[0] for i in range(len(x))])
    if fmt is ModelFormat.ONNX:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for i in range(len(x)):
        xi = x[i : i + 1]
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            xi = np.clip(np.round(xi / scale) + zero, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], xi)
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        rows.append(y)
    return np.concatenate(rows)


def test_variants_and_files(reference_bundle) -> None:
    manifest: Manifest = reference_bundle.manifest
    ids = {v.id for v in manifest.variants}
    assert ids >= EXPECTED
    assert ids & {"onnx-int8-static", "onnx-int8-static-mixed"}
    assert ids & {"tflite-int8-static", "tflite-int8-static-mixed"}
    assert manifest.baseline == {ModelFormat.ONNX: "onnx-fp32", ModelFormat.TFLITE: "tflite-fp32"}
    assert manifest.num_classes == 10 and len(manifest.labels) == 10
    files = sorted(p.name for p in reference_bundle.dir.iterdir())
    assert manifest.probe is not None
    assert files == sorted(
        [MANIFEST_FILE, manifest.probe.filename] + [v.filename for v in manifest.variants]
    )
    on_disk = Manifest.model_validate_json((reference_bundle.dir / MANIFEST_FILE).read_bytes())
    assert on_disk == manifest
    for v in manifest.variants:
        assert v.size_bytes == (reference_bundle.dir / v.filename).stat().st_size
        runtime = {"onnx": "onnxruntime", "tflite": "litert"}[v.format]
        if v.id.startswith("openvino-"):
            runtime = "openvino"  # an ONNX file NNCF quantized for OpenVINO
        assert v.requirements.runtime == runtime
        assert v.requirements.cpu_features == (["fp16"] if v.precision is Precision.FP16 else [])
        assert v.requirements.min_memory_mb >= v.metrics.peak_memory_mb
        m = v.metrics
        assert 0 < m.latency_p50_ms <= m.latency_p95_ms <= m.latency_p99_ms
        assert m.throughput_ips > 0 and m.peak_memory_mb >= 0
    fp32 = manifest.variant("onnx-fp32").metrics.accuracy
    assert fp32 >= 0.88  # 2000 test images of a model at 89.5 % on all 10 000
    static = manifest.variant("tflite-int8-static")
    assert static.inputs[0].dtype == "int8"  # full integer: the file's real input type
    assert static.inputs[0].shape == [None, 28, 28, 1]
    for v in manifest.variants:
        if v.status == "accepted" and v.precision is Precision.INT8:
            assert v.metrics.accuracy_delta >= -manifest.tolerance_points
    assert (
        manifest.variant("tflite-int8-static").size_bytes
        < 0.3 * manifest.variant("tflite-fp32").size_bytes
    )


def test_metrics_match_an_independent_computation(reference_bundle) -> None:
    x, y = fashion_mnist("t10k")
    x = (x[:2000].astype(np.float32) / 255.0)[..., None]
    y = y[:2000].astype(np.int64)
    manifest: Manifest = reference_bundle.manifest
    baseline = {}
    for v in sorted(manifest.variants, key=lambda v: v.precision is not Precision.FP32):
        scores = run_plain(reference_bundle.dir / v.filename, v.format, x, v.requirements.runtime)
        pred = scores.argmax(1)
        accuracy = float(np.mean(pred == y))
        precisions, recalls, f1s = [], [], []
        for c in range(10):
            tp = int(np.sum((pred == c) & (y == c)))
            p = tp / max(int(np.sum(pred == c)), 1)
            r = tp / int(np.sum(y == c))
            precisions.append(p)
            recalls.append(r)
            f1s.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
        confusion = [[int(np.sum((y == t) & (pred == q))) for q in range(10)] for t in range(10)]
        if v.precision is Precision.FP32:
            baseline[v.format] = accuracy
        m = v.metrics
        assert m.accuracy == pytest.approx(accuracy, abs=1e-12), v.id
        assert m.precision_macro == pytest.approx(np.mean(precisions), abs=1e-9), v.id
        assert m.recall_macro == pytest.approx(np.mean(recalls), abs=1e-9), v.id
        assert m.f1_macro == pytest.approx(np.mean(f1s), abs=1e-9), v.id
        assert m.confusion == confusion, v.id
        assert m.accuracy_delta == pytest.approx((accuracy - baseline[v.format]) * 100), v.id


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"), reason="OpenVINO variants: x86-64 hosts only"
)
def test_openvino_int8_is_built_judged_and_timed_on_openvino(reference_bundle) -> None:
    manifest: Manifest = reference_bundle.manifest
    built = [v for v in manifest.variants if v.id.startswith("openvino-int8")]
    assert built, manifest.not_built
    accepted = [v for v in built if v.status == "accepted"]
    assert accepted, [(v.id, v.reason) for v in built]
    variant = accepted[0]
    assert variant.format is ModelFormat.ONNX and variant.precision is Precision.INT8
    assert variant.scheme.startswith("nncf_ptq_mixed")
    assert variant.metrics.accuracy_delta >= -manifest.tolerance_points
    assert 0 < variant.metrics.latency_p50_ms <= variant.metrics.latency_p99_ms
    # QDQ int8 in one ONNX file, a quarter of fp32's size or less
    assert variant.size_bytes < 0.3 * manifest.variant("onnx-fp32").size_bytes


def test_signature_verifies_and_tampering_is_caught(reference_bundle, tmp_path: Path) -> None:
    public = load_public_key(reference_bundle.public_pem)
    assert load_bundle(reference_bundle.dir, public) == reference_bundle.manifest
    with pytest.raises(SignatureError, match="pinned"):
        load_bundle(reference_bundle.dir, generate_key().public_key())

    copy = tmp_path / "bundle"
    shutil.copytree(reference_bundle.dir, copy)
    variant = reference_bundle.manifest.variants[1]
    victim = copy / variant.filename
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="does not match its sha256"):
        load_bundle(copy, public)

    shutil.rmtree(copy)
    shutil.copytree(reference_bundle.dir, copy)
    raw = json.loads((copy / MANIFEST_FILE).read_text())
    raw["variants"][0]["metrics"]["accuracy"] = 0.99
    (copy / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(SignatureError, match="signature does not match"):
        load_bundle(copy, public)
