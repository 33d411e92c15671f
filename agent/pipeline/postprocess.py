"""Model outputs into the task's answer, as the manifest's model description says: top-k
labels, detections in source pixels (thresholded, NMS'd), per-class areas of a mask, the
values of a regression, or a summary of raw tensors. The decoding itself is `shared.tasks`,
the same code the factory judged the variants with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_edge.agent.pipeline.preprocess import Geometry
from lepton_edge.shared.manifest import ModelDescription, Task
from lepton_edge.shared.tasks import Detections, decode_detections, decode_mask

#: Regression outputs published as values up to this many; beyond, as a summary.
MAX_VALUES = 64


@dataclass(frozen=True)
class TensorStats:
    name: str
    shape: tuple[int, ...]
    min: float
    max: float
    mean: float


@dataclass(frozen=True)
class Answer:
    """One frame's answer; exactly the field of its task is set."""

    task: Task
    top: list[tuple[int, float]] | None = None
    detections: Detections | None = None
    areas: dict[int, float] | None = None
    values: list[float] | None = None
    tensors: list[TensorStats] | None = None

    def classes(self) -> frozenset[int] | None:
        """What `changes_only` compares: the top class, the classes detected or covering
        the frame; None where the task has no classes (every answer is new)."""
        if self.top:
            return frozenset({self.top[0][0]})
        if self.detections is not None:
            return frozenset(int(c) for c in self.detections.classes)
        if self.areas is not None:
            return frozenset(c for c, share in self.areas.items() if share >= 0.01)
        return None


def _finite(value: float) -> float:
    return float(np.nan_to_num(value, nan=0.0, posinf=3.4e38, neginf=-3.4e38))


class Postprocessor:
    """Reads one batch's outputs (in the description's order) as one `Answer` per item."""

    def __init__(
        self,
        model: ModelDescription | None,
        output_names: list[str],
        *,
        image_size: tuple[int, int] | None = None,
        top_k: int = 3,
    ) -> None:
        self.model = model
        self.names = output_names
        self.image_size = image_size
        self.top_k = top_k
        if model is None:  # a bundle from before model descriptions: a classifier
            self.task = Task.CLASSIFICATION
            self.index = 0
        else:
            self.task = model.task
            self.index = model.index(model.output) if model.output else 0
        if self.task in (Task.DETECTION, Task.SEGMENTATION) and image_size is None:
            raise ValueError(f"a {self.task.value} model needs its image input described")

    def __call__(self, outputs: list[np.ndarray], geometry: Geometry | None = None) -> list[Answer]:
        n = len(outputs[0]) if outputs and outputs[0].ndim else 1
        return [self._one([o[i : i + 1] for o in outputs], geometry) for i in range(n)]

    def _one(self, outputs: list[np.ndarray], geometry: Geometry | None) -> Answer:
        task = self.task
        if task is Task.CLASSIFICATION:
            scores = outputs[self.index].reshape(-1)
            k = min(self.top_k, scores.size)
            best = np.argpartition(-scores, k - 1)[:k]
            best = best[np.argsort(-scores[best], kind="stable")]
            return Answer(task, top=[(int(i), _finite(scores[i])) for i in best])
        if task is Task.DETECTION:
            assert self.model is not None and self.image_size is not None
            found = decode_detections(outputs, self.model, self.image_size)
            boxes = geometry.to_source(found.boxes) if geometry is not None else found.boxes
            return Answer(task, detections=Detections(boxes, found.scores, found.classes))
        if task is Task.SEGMENTATION:
            assert self.model is not None and self.model.segmentation is not None
            segmentation = self.model.segmentation
            mask = decode_mask(outputs[self.model.index(segmentation.output)], segmentation)
            mask = self._inside(mask, geometry)
            counts = np.bincount(mask.ravel())
            total = max(int(counts.sum()), 1)
            return Answer(task, areas={int(c): n / total for c, n in enumerate(counts) if n})
        values = outputs[self.index].reshape(-1)
        if task is Task.REGRESSION and values.size <= MAX_VALUES:
            return Answer(task, values=[_finite(v) for v in values])
        return Answer(
            task,
            tensors=[self._summary(name, o) for name, o in zip(self.names, outputs, strict=False)],
        )

    def _inside(self, mask: np.ndarray, geometry: Geometry | None) -> np.ndarray:
        """The mask without the letterbox padding (which is not the frame)."""
        if geometry is None or (geometry.pad_x == 0 and geometry.pad_y == 0):
            return mask
        assert self.image_size is not None
        fy, fx = mask.shape[0] / self.image_size[0], mask.shape[1] / self.image_size[1]
        top, left = round(geometry.pad_y * fy), round(geometry.pad_x * fx)
        bottom = mask.shape[0] - top
        right = mask.shape[1] - left
        return mask[top:bottom, left:right]

    @staticmethod
    def _summary(name: str, output: np.ndarray) -> TensorStats:
        x = output[0] if output.ndim else output
        return TensorStats(
            name,
            tuple(int(d) for d in x.shape),
            _finite(x.min()) if x.size else 0.0,
            _finite(x.max()) if x.size else 0.0,
            _finite(x.mean()) if x.size else 0.0,
        )
