"""Reading a model's outputs as its task's answers: detections and masks.

Pure NumPy, used alike by the factory (to judge variants) and the agent (to publish results),
so both read a model exactly the way its manifest's description says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_edge.shared.manifest import DetectionDecoding, ModelDescription, SegmentationDecoding


@dataclass(frozen=True)
class Detections:
    """One image's detections: `boxes` (K, 4) x1, y1, x2, y2 in input pixels, `scores` (K,),
    `classes` (K,) int, best score first."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def _to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    if box_format == "yxyx":
        return boxes[:, [1, 0, 3, 2]]
    if box_format == "cxcywh":
        cx, cy, w, h = boxes.T
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), xyxy."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


#: Boxes up to which NMS works on the full IoU matrix (512 x 512 floats: 1 MB).
PAIRWISE_MAX = 512


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first. Up to
    `PAIRWISE_MAX` boxes the IoU of every pair is computed once and the greedy pass only
    reads it; past that (a low threshold over many anchors) box by box, in bounded memory."""
    order = np.argsort(-scores, kind="stable")
    if order.size > PAIRWISE_MAX:
        kept: list[int] = []
        while order.size and len(kept) < limit:
            first = int(order[0])
            kept.append(first)
            rest = order[1:]
            order = rest[box_iou(boxes[first : first + 1], boxes[rest])[0] <= iou]
        return np.asarray(kept, dtype=np.int64)
    if order.size == 0:
        return order.astype(np.int64)
    overlaps = box_iou(boxes[order], boxes[order]) > iou
    alive = np.ones(order.size, dtype=bool)
    keep: list[int] = []
    for i in range(order.size):
        if not alive[i]:
            continue
        keep.append(i)
        if len(keep) == limit:
            break
        alive[i + 1 :] &= ~overlaps[i, i + 1 :]
    return order[np.asarray(keep, dtype=np.int64)]


def decode_detections(
    outputs: list[np.ndarray],
    model: ModelDescription,
    size: tuple[int, int],
    score_threshold: float | None = None,
) -> Detections:
    """One image's outputs (batch 1) as detections in input pixels (`size` = height, width):
    thresholded, then class-wise NMS. `score_threshold` overrides the description's (the
    factory reads every box down to a low score for mAP)."""
    decoding: DetectionDecoding = model.detection  # type: ignore[assignment]
    threshold = decoding.score_threshold if score_threshold is None else score_threshold
    if decoding.kind == "yolo":
        head = np.asarray(outputs[model.index(decoding.boxes)], dtype=np.float32)[0]
        if head.shape[0] < head.shape[1]:  # (4 + classes, anchors) -> (anchors, 4 + classes)
            head = head.T
        boxes, scores = head[:, :4], head[:, 4:]
    else:
        boxes = np.asarray(outputs[model.index(decoding.boxes)], dtype=np.float32)[0]
        scores = np.asarray(outputs[model.index(decoding.scores or "")], dtype=np.float32)[0]
    if scores.ndim == 1:
        scores = scores[:, None]
    boxes = _to_xyxy(boxes.reshape(-1, 4), decoding.box_format)
    if decoding.normalized:
        height, width = size
        boxes = boxes * np.asarray([width, height, width, height], dtype=np.float32)
    classes = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), classes]
    keep = best >= threshold
    boxes, best, classes = boxes[keep], best[keep], classes[keep]
    # Class-wise NMS in one pass: each class's boxes are moved to a region of their own, so
    # boxes of different classes never overlap (the usual batched-NMS offset).
    offset = classes[:, None].astype(np.float32) * (float(np.abs(boxes).max(initial=0)) + 1)
    order = nms(boxes + offset, best, decoding.nms_iou, decoding.max_detections)
    return Detections(boxes[order], best[order], classes[order].astype(np.int64))


def decode_mask(output: np.ndarray, decoding: SegmentationDecoding) -> np.ndarray:
    """One image's segmentation output (batch 1) as an (H, W) int class map."""
    scores = np.asarray(output, dtype=np.float32)[0]
    axis = decoding.class_axis if decoding.class_axis < 0 else decoding.class_axis - 1
    if scores.ndim == 3 and scores.shape[axis] > 1:
        mask: np.ndarray = scores.argmax(axis=axis).astype(np.int64)
        return mask
    if scores.ndim == 3:
        scores = np.squeeze(scores, axis=axis)
    binary: np.ndarray = (scores > decoding.threshold).astype(np.int64)
    return binary
