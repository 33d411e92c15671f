"""Pretrained third-party models from PyPI wheels through the factory's label-free gate:
several inputs (one int64), several outputs, dynamic shapes, opset 11, TFLite without a
signature, a segmenter. No labels: every variant is judged by fidelity to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lepton_edge.controller.demo import shapes
from lepton_edge.controller.factory import HardwareAdapter, build_bundle, load_bundle
from lepton_edge.controller.factory.evaluate import SpeedBudget
from lepton_edge.shared.manifest import Manifest, Task, Tolerance
from lepton_edge.shared.signing import generate_key
from tests.third_party import model_file

FAST = SpeedBudget(min_runs=5, max_runs=20, seconds=0.05, warmup=1, rounds=2)

pytestmark = pytest.mark.slow


def _build(out: Path, **args: object) -> Manifest:
    key = generate_key()
    manifest = build_bundle(out, key=key, budget=FAST, **args)  # type: ignore[arg-type]
    assert load_bundle(out, key.public_key()) == manifest  # signed, files as pinned
    return manifest


def _gate_is_consistent(manifest: Manifest) -> None:
    """Every variant carries fidelity for every output, and its status follows the gate."""
    assert manifest.model is not None
    tolerance = manifest.tolerance or Tolerance()
    names = [o.name for o in manifest.model.outputs]
    for v in manifest.variants:
        fidelity = v.metrics.fidelity
        assert fidelity is not None and [f.name for f in fidelity] == names, v.id
        worst = min(f.cosine for f in fidelity)
        agreement = v.metrics.agreement
        within = worst >= tolerance.min_cosine and (
            agreement is None or agreement >= tolerance.min_agreement
        )
        assert (v.status == "accepted") == within, (v.id, worst, agreement, v.reason)
    assert manifest.variants[0].status == "accepted"  # fp32 is the reference


def _images(n: int, seed: int, size: int) -> np.ndarray:
    x, _ = shapes.render(n, seed)
    reps = -(-size // shapes.SIZE)
    return np.repeat(np.repeat(x, reps, axis=1), reps, axis=2)[:, :size, :size]


def audio(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Chunks of 512 samples at 16 kHz (tones in noise), silero-vad's three inputs."""
    rng = np.random.default_rng(seed)
    t = np.arange(512) / 16000
    tone = np.sin(2 * np.pi * rng.uniform(100, 800, (n, 1)) * t) * rng.uniform(0, 0.5, (n, 1))
    noise = rng.normal(0, 0.05, (n, 512))
    return {
        "input": (tone + noise).astype(np.float32),
        "state": np.zeros((n, 2, 1, 128), np.float32),  # one whole feed per sample
        "sr": np.full(n, 16000, np.int64),
    }


def test_silero_vad_three_inputs_one_int64_two_outputs(tmp_path: Path) -> None:
    manifest = _build(
        tmp_path / "vad",
        onnx=model_file("silero_vad"),
        calib_x=audio(32),
        eval_x=audio(48),
        model_name="silero-vad",
    )
    model = manifest.model
    assert model is not None and model.task is Task.RAW
    assert [(i.name, i.dtype, i.build_shape) for i in model.inputs] == [
        ("input", "float32", [1, 512]),
        ("state", "float32", [2, 1, 128]),
        ("sr", "int64", []),
    ]
    assert [o.name for o in model.outputs] == ["output", "stateN"]
    for v in manifest.variants:
        assert v.inputs[2].dtype == "int64", v.id  # the sample rate is never quantized
    _gate_is_consistent(manifest)


def test_ppocr_orientation_classifier_opset_11_dynamic_size(tmp_path: Path) -> None:
    def crops(n: int, seed: int) -> np.ndarray:
        return _images(n, seed, 192)[:, :48].transpose(0, 3, 1, 2)  # NCHW uint8

    manifest = _build(
        tmp_path / "cls",
        onnx=model_file("ppocr_cls"),
        calib_x=crops(32, 1),
        eval_x=crops(48, 2),
        model_name="ppocr-cls",
        input_scale=1 / 255,
        input_mean=[0.5],
        input_std=[0.5],  # PaddleOCR's normalization
    )
    model = manifest.model
    assert model is not None and model.task is Task.CLASSIFICATION
    assert model.inputs[0].shape == [None, 3, None, None]
    assert model.inputs[0].build_shape == [1, 3, 48, 192]
    assert "(opset 11 -> 13)" in manifest.variant("onnx-fp32").reason
    assert manifest.variant("onnx-int8-static").metrics.agreement is not None
    _gate_is_consistent(manifest)


def test_blazeface_tflite_two_outputs_no_signature(tmp_path: Path) -> None:
    faces = _images(40, 3, 128)
    manifest = _build(
        tmp_path / "face",
        tflite=model_file("blazeface"),
        calib_x=faces[:16],
        eval_x=faces[16:],
        model_name="blazeface",
        input_scale=2 / 255,
        input_mean=[1.0],  # [-1, 1]
    )
    assert manifest.model is not None
    assert [o.shape for o in manifest.model.outputs] == [[1, 896, 16], [1, 896, 1]]
    failed = {n.id: n for n in manifest.not_built}
    assert failed["tflite-int8-static"].status == "failed"
    assert "no signature" in failed["tflite-int8-static"].reason
    _gate_is_consistent(manifest)


def test_selfie_segmenter_mask_iou_against_fp32(tmp_path: Path) -> None:
    people = _images(24, 4, 256)
    manifest = _build(
        tmp_path / "selfie",
        tflite=model_file("selfie_segmentation"),
        calib_x=people[:8],
        eval_x=people[8:],
        model_name="selfie",
        input_scale=1 / 255,
        description={"task": "segmentation", "segmentation": {"output": "activation_10"}},
    )
    assert manifest.model is not None and manifest.model.task is Task.SEGMENTATION
    for v in manifest.variants:
        assert v.metrics.agreement is not None and 0 <= v.metrics.agreement <= 1, v.id
    assert manifest.variants[0].metrics.agreement == 1.0
    _gate_is_consistent(manifest)


def test_adapter_takes_a_multi_input_model_without_labels(tmp_path: Path) -> None:
    adapter = HardwareAdapter(
        tmp_path / "vad", model_name="vad", calibration_samples=16, holdout_samples=24
    )
    adapter.fit(model_file("silero_vad"), audio(48, seed=1))
    rows = adapter.evaluate(audio(16, seed=2))
    assert adapter.manifest is not None
    assert [r.id for r in rows] == [v.id for v in adapter.manifest.variants]
    assert rows[0].min_cosine == 1.0 and rows[0].accuracy is None  # fp32 against itself
    assert all(r.min_cosine is not None for r in rows)
    assert "cosine" in str(rows).splitlines()[0]
