"""The pipeline on its own: pre-processing exactly as described (checked against a direct
computation), boxes mapped back through a letterbox, masks without the padding, summaries
of raw tensors, and the frames and descriptions it refuses with one line."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.agent.engine import EngineSettings
from lepton_edge.agent.pipeline import BadFrame, Pipeline
from lepton_edge.agent.pipeline.postprocess import Postprocessor
from lepton_edge.agent.pipeline.preprocess import Geometry, Preprocessor
from lepton_edge.agent.runner import InferenceRunner
from lepton_edge.agent.runtimes import VariantLoadError
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import (
    ImageInput,
    Manifest,
    ModelDescription,
    ModelInput,
    Requirements,
    SegmentationDecoding,
    Task,
    TensorSpec,
    Variant,
    sha256_file,
)
from lepton_edge.shared.signing import generate_key, sign_manifest
from tests.paths import FASHION_MNIST_MODELS


def test_nchw_bgr_mean_std_is_what_the_description_says() -> None:
    spec = ImageInput(
        layout="NCHW", pixel_format="bgr", size=(4, 6), scale=1 / 255, mean=[0.5, 0.4, 0.3],
        std=[0.2, 0.25, 0.3],
    )  # fmt: skip
    frame = np.random.default_rng(0).integers(0, 256, (1, 4, 6, 3), dtype=np.uint8)
    x, geometry = Preprocessor(spec)(frame)
    expected = ((frame[..., ::-1] / 255 - spec.mean) / spec.std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    assert x.dtype == np.float32 and geometry == Geometry(6, 4)


def test_letterbox_keeps_aspect_and_boxes_come_back_in_source_pixels() -> None:
    pre = Preprocessor(ImageInput(size=(128, 128), resize="letterbox", scale=1 / 255))
    frame = np.zeros((1, 480, 640, 3), np.uint8)
    frame[0, 100:300, 200:400] = 255  # a white square in the source
    x, geometry = pre(frame)
    assert geometry.pad_y == 16 and geometry.pad_x == 0 and geometry.scale_x == 0.2
    ys, xs = np.nonzero(x[0, :, :, 0] > 0.9)
    model_box = np.asarray([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    np.testing.assert_allclose(geometry.to_source(model_box), [[200, 100, 400, 300]], atol=6)
    assert np.allclose(x[0, :16], 114 / 255)  # the bars are grey, not a part of the frame


def test_grey_and_colour_frames_are_converted_and_bad_frames_refused() -> None:
    grey = Preprocessor(ImageInput(pixel_format="gray", size=(2, 2)))
    rgb = np.full((1, 2, 2, 3), [255, 0, 0], np.uint8)
    np.testing.assert_allclose(grey(rgb)[0][..., 0], 0.299 * 255, rtol=1e-5)
    colour = Preprocessor(ImageInput(size=(2, 2)))
    assert colour(np.full((1, 2, 2, 1), 7, np.uint8))[0].shape == (1, 2, 2, 3)
    for bad in (np.zeros((1, 2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8)):
        with pytest.raises(BadFrame, match="is not an image"):
            colour(bad)


def test_segmentation_areas_leave_out_the_padding_and_raw_is_summarised() -> None:
    model = ModelDescription(
        task=Task.SEGMENTATION,
        inputs=[ModelInput(name="x", shape=[1, 4, 4, 3], dtype="float32")],
        outputs=[TensorSpec(name="mask", shape=[1, 4, 4, 2], dtype="float32")],
        segmentation=SegmentationDecoding(output="mask"),
    )
    scores = np.zeros((1, 4, 4, 2), np.float32)
    scores[0, :, :, 0] = 1  # background everywhere...
    scores[0, 1:3, :, 1] = 2  # ...but the two rows that are the frame say class 1
    post = Postprocessor(model, ["mask"], image_size=(4, 4))
    padded = Geometry(8, 4, 0.5, 0.5, 0.0, 1.0)  # a 4x8 frame letterboxed: 1 bar row each side
    assert post([scores], padded)[0].areas == {1: 1.0}
    assert post([scores])[0].areas == {0: 0.5, 1: 0.5}
    raw = ModelDescription(
        task=Task.RAW,
        inputs=[ModelInput(name="x", shape=[1, 3], dtype="float32")],
        outputs=[TensorSpec(name="emb", shape=[1, 3], dtype="float32")],
    )
    (answer,) = Postprocessor(raw, ["emb"])([np.asarray([[1.0, np.nan, -2.0]], np.float32)])
    assert answer.tensors is not None and answer.tensors[0].shape == (3,)
    assert np.isfinite([answer.tensors[0].min, answer.tensors[0].max]).all()


def _described_tensor_bundle(out: Path) -> Manifest:
    """The Fashion-MNIST model described as taking tensors (no image input, no scale)."""
    model_file = FASHION_MNIST_MODELS / "model.onnx"
    sha = sha256_file(model_file)
    out.mkdir()
    (out / f"{sha}.onnx").write_bytes(model_file.read_bytes())
    manifest = Manifest(
        bundle_id="tensors",
        model_name="fm",
        version="1",
        created_at=time.time(),
        num_classes=10,
        variants=[
            Variant(
                id="onnx-fp32",
                format="onnx",
                precision="fp32",
                scheme="test",
                sha256=sha,
                size_bytes=model_file.stat().st_size,
                requirements=Requirements(runtime="onnxruntime"),
            )
        ],
        model=ModelDescription(
            task=Task.CLASSIFICATION,
            inputs=[ModelInput(name="input", shape=[None, 28, 28, 1], dtype="float32")],
            outputs=[TensorSpec(name="output_0", shape=[None, 10], dtype="float32")],
        ),
    )
    return sign_manifest(manifest, generate_key())


def test_pixels_for_a_tensor_model_are_refused_at_deploy_not_per_frame(tmp_path: Path) -> None:
    manifest = _described_tensor_bundle(tmp_path / "bundle")
    specs = manifest.model.inputs if manifest.model else []
    pipeline = Pipeline.for_manifest(manifest, list(specs), manifest.model.outputs)  # type: ignore[union-attr]
    with pytest.raises(BadFrame, match="takes tensors, not images"):
        pipeline.prepare(np.zeros((1, 28, 28, 1), np.uint8))
    with pytest.raises(BadFrame, match="does not fit the model: it takes N x 28x28x1"):
        pipeline.check_tensor(np.zeros((1, 32), np.float32))
    runner = InferenceRunner(EngineSettings(source="idx"), emit_event=lambda *a: None)
    try:
        with pytest.raises(VariantLoadError, match=r"takes tensors, not images.*--input-scale"):
            runner.activate(tmp_path / "bundle", manifest, {"performance": "onnx-fp32"})  # type: ignore[dict-item]
    finally:
        runner.close()
    two_inputs = manifest.model.model_copy(  # type: ignore[union-attr]
        update={
            "inputs": [
                *manifest.model.inputs,
                manifest.model.inputs[0].model_copy(update={"name": "b"}),
            ]
        }  # type: ignore[union-attr]
    )
    with pytest.raises(UserError, match="the agent feeds one input; this model takes 2"):
        Pipeline.for_manifest(manifest.model_copy(update={"model": two_inputs}), [], [])
