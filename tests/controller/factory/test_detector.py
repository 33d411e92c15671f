"""The project's reference detector: committed ONNX and TFLite, its bundle with mAP against
ground-truth boxes and fidelity to fp32, the decoding both sides share, and bad labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lepton_edge.controller.demo import shapes
from lepton_edge.controller.factory import build_bundle, load_bundle
from lepton_edge.controller.factory.evaluate import Predictor, SpeedBudget
from lepton_edge.controller.factory.quality import coco_map
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import (
    DetectionDecoding,
    ModelDescription,
    ModelFormat,
    Precision,
    Task,
    TensorSpec,
)
from lepton_edge.shared.signing import generate_key
from lepton_edge.shared.tasks import Detections, decode_detections
from tests.paths import FASHION_MNIST_MODELS as REFERENCE

FAST = SpeedBudget(min_runs=5, max_runs=20, seconds=0.05, warmup=1, rounds=2)
DESCRIPTION = REFERENCE / "detector.toml"


def _truth(boxes: list[np.ndarray]) -> list[Detections]:
    return [Detections(b[:, :4], np.ones(len(b)), b[:, 4].astype(np.int64)) for b in boxes]


def test_committed_detector_finds_the_rendered_shapes_in_both_formats() -> None:
    images, boxes = shapes.render(64, seed=5)
    x = images.astype(np.float32) / 255
    model = ModelDescription(
        task=Task.DETECTION,
        inputs=[{"name": "image", "shape": [None, 128, 128, 3], "dtype": "float32"}],
        outputs=[
            TensorSpec(name="boxes", shape=[None, 256, 4], dtype="float32"),
            TensorSpec(name="scores", shape=[None, 256, 3], dtype="float32"),
        ],
        detection=DetectionDecoding(boxes="boxes", scores="scores", score_threshold=0.05),
    )
    found = {}
    for fmt in ModelFormat:
        predictor = Predictor(REFERENCE / f"detector.{fmt.value}", fmt)
        found[fmt] = [
            decode_detections(predictor.run([x[i : i + 1]]), model, (128, 128)) for i in range(64)
        ]
        map50, map50_95 = coco_map(_truth(boxes), found[fmt], (128, 128), len(shapes.CLASSES))
        assert map50 >= 0.95 and map50_95 >= 0.6, (fmt, map50, map50_95)
    onnx_boxes = np.concatenate([d.boxes for d in found[ModelFormat.ONNX]])
    tflite_boxes = np.concatenate([d.boxes for d in found[ModelFormat.TFLITE]])
    assert onnx_boxes.shape == tflite_boxes.shape  # the same network exported twice
    assert np.abs(onnx_boxes - tflite_boxes).max() < 0.1  # pixels


@pytest.fixture(scope="module")
def detector_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("detector") / "bundle"
    calib, _ = shapes.render(64, seed=3)
    images, boxes = shapes.render(120, seed=2)
    key = generate_key()
    manifest = build_bundle(
        out,
        onnx=REFERENCE / "detector.onnx",
        tflite=REFERENCE / "detector.tflite",
        description=DESCRIPTION,
        calib_x=calib,
        eval_x=images,
        eval_y=boxes,
        key=key,
        model_name="shapes-detector",
        budget=FAST,
        skip=["onnx-int8-dynamic", "tflite-int8-weight-only"],
    )
    assert load_bundle(out, key.public_key()) == manifest
    return out, manifest


def test_detector_bundle_reports_map_and_fidelity(detector_bundle: tuple[Path, object]) -> None:
    _, manifest = detector_bundle
    model = manifest.model
    assert model is not None and model.task is Task.DETECTION
    assert model.detection is not None and model.detection.score_threshold == 0.3
    assert model.inputs[0].image is not None and model.inputs[0].image.size == (128, 128)
    assert manifest.labels == list(shapes.CLASSES) and manifest.num_classes == 3
    assert manifest.input_scale == pytest.approx(1 / 255)
    for v in manifest.variants:
        m = v.metrics
        assert m.map50 is not None and m.map50_95 is not None, v.id
        assert m.agreement is not None and m.fidelity is not None, v.id
        assert [f.name for f in m.fidelity] == ["boxes", "scores"]
        if v.precision is Precision.FP32:
            assert m.map50 >= 0.95 and m.agreement == 1.0 and m.metric_delta == 0
        assert m.metric_delta is not None
        assert (v.status == "accepted") == (m.metric_delta >= -1.0 and m.agreement >= 0.97), v.id
    int8 = [v for v in manifest.accepted() if v.precision is Precision.INT8]
    assert {v.format for v in int8} == {ModelFormat.ONNX, ModelFormat.TFLITE}
    assert manifest.probe is not None and manifest.probe.samples == 16


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (lambda b: [*b[:-1], np.array([[100, 100, 140, 120, 0]])], "outside the 128x128 input"),
        (lambda b: b[:-1], "evaluation data has 20 images but 19 label entries"),
        (lambda b: [np.c_[x[:, :4], np.full(len(x), 7)] for x in b], "class must be an integer"),
        (lambda b: np.zeros(20, np.int64), "detection labels must be a list"),
    ],
)
def test_bad_detection_labels_are_one_line(labels: object, message: str, tmp_path: Path) -> None:
    images, boxes = shapes.render(20, seed=9)
    with pytest.raises(UserError) as caught:
        build_bundle(
            tmp_path / "bundle",
            onnx=REFERENCE / "detector.onnx",
            description=DESCRIPTION,
            calib_x=images,
            eval_x=images,
            eval_y=labels(boxes),  # type: ignore[operator]
            key=generate_key(),
            model_name="shapes-detector",
            budget=FAST,
        )
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_yolo_head_decodes_like_boxes_and_scores() -> None:
    """The same two boxes as a YOLOv8 head (1, 4 + classes, anchors) in pixels, cx/cy/w/h."""
    head = np.zeros((1, 4 + 2, 8), np.float32)  # (channels, anchors): anchors outnumber
    head[0, :4, 0] = [30, 30, 20, 20]  # cx, cy, w, h
    head[0, 4, 0] = 0.9
    head[0, :4, 1] = [31, 31, 20, 20]  # overlaps the first: suppressed by NMS
    head[0, 4, 1] = 0.8
    head[0, :4, 2] = [90, 60, 10, 30]
    head[0, 5, 2] = 0.7
    head[0, 4, 3] = 0.1  # below the threshold
    model = ModelDescription(
        task=Task.DETECTION,
        inputs=[{"name": "images", "shape": [1, 3, 128, 128], "dtype": "float32"}],
        outputs=[TensorSpec(name="output0", shape=[1, 6, 8], dtype="float32")],
        detection=DetectionDecoding(
            kind="yolo", boxes="output0", box_format="cxcywh", normalized=False
        ),
    )
    found = decode_detections([head], model, (128, 128))
    assert found.classes.tolist() == [0, 1]
    np.testing.assert_allclose(found.boxes, [[20, 20, 40, 40], [85, 45, 95, 75]])
    np.testing.assert_allclose(found.scores, [0.9, 0.7])


def test_a_detector_without_its_image_input_described_is_refused(tmp_path: Path) -> None:
    """Box pixels depend on the image size: NCHW or NHWC is said, never guessed."""
    images, boxes = shapes.render(8, seed=9)
    with pytest.raises(UserError) as caught:
        build_bundle(
            tmp_path / "bundle",
            onnx=REFERENCE / "detector.onnx",
            description={"task": "detection", "detection": {"boxes": "boxes", "scores": "scores"}},
            calib_x=images.astype(np.float32) / 255,
            eval_x=images.astype(np.float32) / 255,
            eval_y=boxes,
            key=generate_key(),
            model_name="shapes-detector",
            budget=FAST,
        )
    assert "needs its image input described" in str(caught.value)
    assert list(tmp_path.iterdir()) == []
