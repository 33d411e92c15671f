"""A signed bundle of the project's reference detector, made in a second without the
factory: ONNX fp32, ONNX fp16 (converted here) and TFLite fp32, with the model description
the agent's pipeline applies (letterbox to 128x128, pixels times 1/255)."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lepton_edge.controller.demo import shapes
from lepton_edge.shared.manifest import (
    DetectionDecoding,
    ImageInput,
    Manifest,
    ModelDescription,
    ModelInput,
    Requirements,
    Task,
    TensorSpec,
    Variant,
    sha256_file,
)
from lepton_edge.shared.messages import PowerLevel
from lepton_edge.shared.signing import sign_manifest
from tests.paths import REPO

REFERENCE = REPO / "controller" / "demo" / "reference"

DESCRIPTION = ModelDescription(
    task=Task.DETECTION,
    inputs=[
        ModelInput(
            name="input",
            shape=[None, 128, 128, 3],
            dtype="float32",
            build_shape=[1, 128, 128, 3],
            image=ImageInput(size=(128, 128), resize="letterbox", scale=1 / 255),
        )
    ],
    outputs=[
        TensorSpec(name="boxes", shape=[None, 256, 4], dtype="float32"),
        TensorSpec(name="scores", shape=[None, 256, 3], dtype="float32"),
    ],
    detection=DetectionDecoding(boxes="boxes", scores="scores", score_threshold=0.3),
)

#: performance -> fp32, saver and below -> fp16 (a precision switch on battery)
LADDER = {
    PowerLevel.PERFORMANCE: "onnx-fp32",
    PowerLevel.BALANCED: "onnx-fp32",
    PowerLevel.SAVER: "onnx-fp16",
    PowerLevel.CRITICAL: "onnx-fp16",
}


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.save(model, dst)


def build_detector_bundle(
    out: Path, key: Ed25519PrivateKey, bundle_id: str = "shapes-1"
) -> Manifest:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "fp16.onnx"
    _fp16(REFERENCE / "detector.onnx", tmp)
    files = {
        "onnx-fp32": (REFERENCE / "detector.onnx", "onnx", "fp32", "onnxruntime"),
        "onnx-fp16": (tmp, "onnx", "fp16", "onnxruntime"),
        "tflite-fp32": (REFERENCE / "detector.tflite", "tflite", "fp32", "litert"),
    }
    variants = []
    for vid, (path, fmt, precision, runtime) in files.items():
        sha = sha256_file(path)
        (out / f"{sha}.{fmt}").write_bytes(path.read_bytes())
        variants.append(
            Variant(
                id=vid,
                format=fmt,
                precision=precision,
                scheme="test",
                sha256=sha,
                size_bytes=path.stat().st_size,
                requirements=Requirements(runtime=runtime),
            )
        )
    tmp.unlink()
    manifest = Manifest(
        bundle_id=bundle_id,
        model_name="shapes-detector",
        version="1",
        created_at=time.time(),
        num_classes=len(shapes.CLASSES),
        labels=list(shapes.CLASSES),
        variants=variants,
        model=DESCRIPTION,
    )
    manifest = sign_manifest(manifest, key)
    (out / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return manifest
