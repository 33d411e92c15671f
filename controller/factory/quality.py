"""How good a variant is: fidelity to fp32 always, the task's metric when labels exist.

Fidelity needs no labels, so every variant of every model is judged: each output's cosine
similarity and SQNR against the same format's fp32 on the same inputs, plus agreement on the
task's answers (top-1 for a classifier, mAP@0.5 of its detections against fp32's for a
detector, mask IoU for a segmenter). With labels: accuracy/precision/recall/F1, mAP@0.5 and
mAP@0.5:0.95 (pycocotools' COCO evaluator), mIoU, MAE/RMSE. `judge` applies the tolerance.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
from typing import Any

import numpy as np

from lepton_edge.shared.manifest import (
    ModelDescription,
    OutputFidelity,
    Task,
    Tolerance,
    VariantMetrics,
)
from lepton_edge.shared.tasks import Detections, decode_detections, decode_mask

#: Per sample, the model's outputs in description order.
Outputs = list[list[np.ndarray]]

#: Detections down to this score take part in mAP (the COCO protocol ranks them all).
MAP_SCORE_FLOOR = 0.05
#: SQNR reported for identical outputs (no noise at all).
SQNR_CAP_DB = 120.0


def _flat(outputs: Outputs, j: int) -> np.ndarray:
    return np.concatenate([np.asarray(o[j], dtype=np.float64).ravel() for o in outputs])


def fidelity(model: ModelDescription, reference: Outputs, got: Outputs) -> list[OutputFidelity]:
    """Each output's cosine similarity and SQNR (dB) against the reference, over all samples."""
    result = []
    for j, spec in enumerate(model.outputs):
        ref, out = _flat(reference, j), _flat(got, j)
        noise = float(np.sum((ref - out) ** 2))
        signal = float(np.sum(ref**2))
        norms = float(np.linalg.norm(ref) * np.linalg.norm(out))
        cosine = float(ref @ out / norms) if norms > 0 else float(noise == 0)
        sqnr = SQNR_CAP_DB if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
        if not (math.isfinite(cosine) and math.isfinite(sqnr)):  # NaN or Inf in the outputs
            cosine, sqnr = 0.0, -SQNR_CAP_DB
        result.append(
            OutputFidelity(
                name=spec.name, cosine=round(cosine, 6), sqnr_db=round(min(sqnr, SQNR_CAP_DB), 2)
            )
        )
    return result


def agreement(
    model: ModelDescription, reference: Outputs, got: Outputs, size: tuple[int, int]
) -> float | None:
    """Agreement on the task's answers with the reference (None for regression and raw)."""
    if model.task is Task.CLASSIFICATION:
        j = model.index(model.output or "")
        ref = np.stack([np.asarray(o[j]).reshape(-1) for o in reference]).argmax(axis=1)
        out = np.stack([np.asarray(o[j]).reshape(-1) for o in got]).argmax(axis=1)
        return float(np.mean(ref == out))
    if model.task is Task.DETECTION:
        truth = [decode_detections(o, model, size) for o in reference]
        found = [decode_detections(o, model, size, MAP_SCORE_FLOOR) for o in got]
        return coco_map(truth, found, size, _classes(model, reference))[0]
    if model.task is Task.SEGMENTATION:
        decoding = model.segmentation
        assert decoding is not None
        j = model.index(decoding.output)
        ious = [
            _mean_iou(decode_mask(r[j], decoding), decode_mask(g[j], decoding))
            for r, g in zip(reference, got, strict=True)
        ]
        return float(np.mean(ious))
    return None


def _classes(model: ModelDescription, outputs: Outputs) -> int:
    decoding = model.detection
    assert decoding is not None
    if decoding.kind == "yolo":
        shape = np.asarray(outputs[0][model.index(decoding.boxes)]).shape[1:]
        return int(min(shape)) - 4
    return int(np.asarray(outputs[0][model.index(decoding.scores or "")]).shape[-1])


def _mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean IoU over the classes present in either mask (1.0 when both are empty)."""
    classes = [c for c in np.union1d(np.unique(a), np.unique(b)) if c != 0] or [0]
    ious = []
    for c in classes:
        inter = np.sum((a == c) & (b == c))
        union = np.sum((a == c) | (b == c))
        ious.append(1.0 if union == 0 else inter / union)
    return float(np.mean(ious))


def coco_map(
    truth: list[Detections], found: list[Detections], size: tuple[int, int], classes: int
) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) of `found` against `truth`, by pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    height, width = size

    def xywh(box: np.ndarray) -> list[float]:
        x1, y1, x2, y2 = (float(v) for v in box)
        return [x1, y1, x2 - x1, y2 - y1]

    annotations = [
        {
            "id": k + 1,
            "image_id": n,
            "category_id": int(c) + 1,
            "bbox": xywh(b),
            "area": float((b[2] - b[0]) * (b[3] - b[1])),
            "iscrowd": 0,
        }
        for k, (n, b, c) in enumerate(
            (n, b, c) for n, d in enumerate(truth) for b, c in zip(d.boxes, d.classes, strict=True)
        )
    ]
    results = [
        {"image_id": n, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
        for n, d in enumerate(found)
        for b, s, c in zip(d.boxes, d.scores, d.classes, strict=True)
    ]
    if not annotations:
        return (1.0, 1.0) if not results else (0.0, 0.0)
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": [{"id": n, "height": height, "width": width} for n in range(len(truth))],
            "annotations": annotations,
            "categories": [{"id": c + 1} for c in range(classes)],
        }
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    map50_95, map50 = (max(float(v), 0.0) for v in evaluator.stats[:2])
    return map50, map50_95


def task_metrics(
    model: ModelDescription, outputs: Outputs, labels: Any, classes: int, size: tuple[int, int]
) -> dict[str, Any]:
    """The task's metric against labels (prepared by `data.prepare_labels`)."""
    if model.task is Task.CLASSIFICATION:
        j = model.index(model.output or "")
        scores = np.stack([np.asarray(o[j]).reshape(-1) for o in outputs])
        return accuracy_metrics(scores, labels, classes)
    if model.task is Task.DETECTION:
        found = [decode_detections(o, model, size, MAP_SCORE_FLOOR) for o in outputs]
        map50, map50_95 = coco_map(labels, found, size, classes)
        return {"map50": map50, "map50_95": map50_95}
    if model.task is Task.SEGMENTATION:
        decoding = model.segmentation
        assert decoding is not None
        j = model.index(decoding.output)
        masks = np.stack([decode_mask(o[j], decoding) for o in outputs])
        if masks.shape != labels.shape:
            from lepton_edge.shared.errors import UserError

            raise UserError(f"segmentation labels are {labels.shape}, the masks {masks.shape}")
        return {"miou": _dataset_miou(masks, labels)}
    j = model.index(model.output or "")
    values = np.stack([np.asarray(o[j], dtype=np.float64).reshape(-1) for o in outputs])
    error = values - np.asarray(labels, dtype=np.float64).reshape(len(values), -1)
    mae, rmse = float(np.abs(error).mean()), float(np.sqrt((error**2).mean()))
    worst = sys.float_info.max  # NaN or Inf outputs: as wrong as a number can say
    return {
        "mae": mae if math.isfinite(mae) else worst,
        "rmse": rmse if math.isfinite(rmse) else worst,
    }


def _dataset_miou(masks: np.ndarray, labels: np.ndarray) -> float:
    classes = np.union1d(np.unique(labels), np.unique(masks))
    ious = []
    for c in classes:
        union = np.sum((masks == c) | (labels == c))
        if union:
            ious.append(np.sum((masks == c) & (labels == c)) / union)
    return float(np.mean(ious))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return counts


def accuracy_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 (a class never predicted counts 0 precision) and the
    confusion matrix, from the scores' argmax."""
    predicted = scores.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, num_classes)
    true_positive = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0)
    actual_count = confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_count > 0, true_positive / predicted_count, 0.0)
        recall = np.where(actual_count > 0, true_positive / actual_count, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = actual_count > 0  # macro average over the classes the evaluation data has
    return {
        "accuracy": float(true_positive.sum() / max(len(labels), 1)),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "confusion": confusion.tolist(),
    }


def _exceeds(drop: float, limit: float) -> bool:
    """A drop of exactly the limit is within it: (1.0 - 0.98) * 100 is 2.0000000000000018."""
    return round(drop, 9) > limit


def with_deltas(metrics: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """`accuracy_delta` / `metric_delta` (points vs fp32) for a variant's labelled metrics."""
    out = dict(metrics)
    if baseline is None:
        return out
    if metrics.get("accuracy") is not None and baseline.get("accuracy") is not None:
        out["accuracy_delta"] = (metrics["accuracy"] - baseline["accuracy"]) * 100
    for key in ("map50", "miou"):
        if metrics.get(key) is not None and baseline.get(key) is not None:
            out["metric_delta"] = (metrics[key] - baseline[key]) * 100
    return out


def judge(
    metrics: VariantMetrics, baseline: VariantMetrics | None, tolerance: Tolerance
) -> str | None:
    """Why the variant is outside the tolerance, or None when it may ship: the labelled
    task metric first (the figure a user knows), then fidelity and agreement with fp32."""
    for name, delta in (
        ("accuracy", metrics.accuracy_delta),
        ("task metric", metrics.metric_delta),
    ):
        if delta is not None and _exceeds(-delta, tolerance.points):
            return f"{name} drop {-delta:.2f} pt > tolerance {tolerance.points:g} pt"
    if baseline is not None and metrics.rmse is not None and baseline.rmse:
        rise = metrics.rmse / baseline.rmse - 1
        if _exceeds(rise, tolerance.max_rmse_rise):
            return f"RMSE {rise:+.1%} vs fp32 > tolerance {tolerance.max_rmse_rise:.0%}"
    for f in metrics.fidelity or []:
        if f.cosine < tolerance.min_cosine:
            return (
                f"output {f.name!r} cosine {f.cosine:.4f} to fp32 < {tolerance.min_cosine:g} "
                f"(SQNR {f.sqnr_db:.1f} dB)"
            )
    if metrics.agreement is not None and metrics.agreement < tolerance.min_agreement:
        return f"agreement with fp32 {metrics.agreement:.3f} < {tolerance.min_agreement:g}"
    return None
