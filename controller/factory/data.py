"""Calibration and evaluation data: arrays, IDX, `.npy` or `.npz` files, checked against the
model's inputs; labels checked against its task.

Data for a model of one input is an array with the samples along axis 0; for several inputs,
a mapping (or `.npz`) from input name to such an array. An array of the input's own rank is a
batch (`x[i:i+1]` is one sample's feed); one of rank + 1 holds one whole feed per sample
(`x[i]`: a recurrent state `(2, 1, 128)`, a scalar sample rate). A missing trailing channel
axis is added, so `(N, 28, 28)` from an IDX file feeds a `(N, 28, 28, 1)` model.

Float inputs take the stated `scale` (and `mean`/`std`); integer pixels without a stated
scale are refused: whether a model wants 0..255 or 0..1 cannot be guessed, and a wrong guess
scores as garbage. Integer inputs (token ids, flags, a sample rate) are passed through as the
model's dtype and never scaled. Every mismatch is a one-line `UserError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import read_idx
from lepton_edge.shared.manifest import ModelDescription, Task, TensorSpec
from lepton_edge.shared.tasks import Detections

DataSource = np.ndarray | Mapping[str, np.ndarray] | Path | str


@dataclass(frozen=True)
class Scaling:
    """What float input values are multiplied by, then less `mean`, over `std`."""

    scale: float | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class Feeds:
    """`len(self)` samples for a model's inputs, in the model's input order."""

    arrays: tuple[np.ndarray, ...]
    batched: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.arrays[0])

    @property
    def all_batched(self) -> bool:
        return all(self.batched)

    def feed(self, i: int, count: int = 1) -> list[np.ndarray]:
        """The inputs for samples i..i+count (count > 1 only when every input is batched)."""
        return [  # np.array, not ascontiguousarray: that makes a scalar input (a rate) 1-D
            np.array(a[i : i + count] if b else a[i], order="C")
            for a, b in zip(self.arrays, self.batched, strict=True)
        ]

    def head(self, n: int) -> Feeds:
        return Feeds(tuple(a[:n] for a in self.arrays), self.batched)

    def batch_of(self, size: int) -> list[np.ndarray] | None:
        """One feed of `size` samples (repeating them if needed), None when some input has
        no batch axis."""
        if not self.all_batched:
            return None
        return [np.ascontiguousarray(np.resize(a, (size, *a.shape[1:]))) for a in self.arrays]

    def shapes(self) -> list[list[int]]:
        """The concrete shape of each input as one sample feeds it (the build shape)."""
        return [list(a.shape) for a in self.feed(0)]


def load_array(source: np.ndarray | Path | str, what: str) -> np.ndarray:
    """An array from memory, an IDX file (optionally gzipped) or a `.npy` file."""
    if isinstance(source, np.ndarray):
        return source
    path = Path(source)
    if not path.exists():
        raise UserError(f"{what} file {path} does not exist")
    if path.suffix == ".npy":
        try:
            return np.asarray(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise UserError(f"{what} file {path} is not a NumPy .npy array ({exc})") from None
    return read_idx(path)


def load_source(source: DataSource, what: str) -> np.ndarray | dict[str, np.ndarray]:
    """An array, or for an `.npz` file / mapping a dict of input name -> array."""
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v) for k, v in source.items()}
    if isinstance(source, (str, Path)) and Path(source).suffix == ".npz":
        path = Path(source)
        if not path.exists():
            raise UserError(f"{what} file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: np.asarray(npz[k]) for k in npz.files}
        except ValueError as exc:
            raise UserError(f"{what} file {path} is not a NumPy .npz archive ({exc})") from None
    return load_array(source, what)


def prepare_feeds(
    source: DataSource, inputs: list[TensorSpec], what: str, scaling: Scaling | None = None
) -> Feeds:
    """Check, scale and shape `source` into the model's inputs (see the module docstring)."""
    data = load_source(source, what)
    names = [i.name for i in inputs]
    if isinstance(data, dict):
        missing, extra = [n for n in names if n not in data], sorted(set(data) - set(names))
        if missing or extra:
            raise UserError(
                f"{what} names inputs {sorted(data)} but the model takes {names}"
                + (f": {missing} missing" if missing else f": {extra} unknown")
            )
        arrays = [data[n] for n in names]
    elif len(inputs) == 1:
        arrays = [data]
    else:
        raise UserError(
            f"the model takes {len(inputs)} inputs {names}: give {what} as an .npz file "
            "(or a dict) with one array per input name"
        )
    scaling = scaling or Scaling()
    float_inputs = [i for i in inputs if np.dtype(i.dtype).kind == "f"]
    if len(float_inputs) > 1 and (scaling.scale is not None or scaling.mean):
        raise UserError(
            f"--input-scale/mean/std apply to one image input, the model has float inputs "
            f"{[i.name for i in float_inputs]}: scale the data yourself"
        )
    prepared = [
        _prepare_one(
            np.asarray(a), spec, f"{what} {spec.name!r}" if len(inputs) > 1 else what, scaling
        )
        for a, spec in zip(arrays, inputs, strict=True)
    ]
    counts = {len(a) for a, _ in prepared}
    if len(counts) > 1:
        raise UserError(f"{what} has different sample counts per input: {sorted(counts)}")
    return Feeds(tuple(a for a, _ in prepared), tuple(b for _, b in prepared))


def _prepare_one(
    x: np.ndarray, spec: TensorSpec, what: str, scaling: Scaling
) -> tuple[np.ndarray, bool]:
    if x.ndim == 0 or len(x) == 0:
        raise UserError(f"{what} is empty: give at least one sample")
    want = np.dtype(spec.dtype)
    if want.kind in "iub":  # token ids, flags: the model's own integers, never scaled
        if x.dtype.kind not in "iub":
            raise UserError(f"{what} is {x.dtype} but the input takes {want.name} (token ids?)")
        x = x.astype(want)
    elif want.kind == "f":
        x = _scaled(x, what, scaling)
    else:
        raise UserError(f"{what}: inputs of dtype {want.name} are not supported")
    rank = len(spec.shape)
    if x.ndim == rank - 1 and rank >= 3 and spec.shape[-1] == 1:
        x = x[..., None]  # (N, H, W) -> (N, H, W, 1)
    if x.ndim == rank:
        batched, sample, wanted = True, list(x.shape[1:]), list(spec.shape[1:])
    elif x.ndim == rank + 1:
        batched, sample, wanted = False, list(x.shape[1:]), list(spec.shape)
    else:
        raise UserError(
            f"{what} has samples of shape {tuple(x.shape[1:])} but the model takes "
            f"{_shape(spec.shape[1:])}: reshape the data or check that it belongs to this model"
        )
    if any(w is not None and w != h for w, h in zip(wanted, sample, strict=True)):
        shown = _shape(spec.shape[1:]) if batched else _shape(spec.shape)
        raise UserError(
            f"{what} has samples of shape {tuple(sample)} but the model takes {shown}: "
            "reshape the data or check that it belongs to this model"
        )
    if want.kind == "f" and not np.isfinite(x).all():
        raise UserError(f"{what} contains NaN or infinite values")
    return np.ascontiguousarray(x), batched


def _shape(dims: list[int | None]) -> tuple[int | str, ...]:
    return tuple("?" if d is None else d for d in dims)


def _scaled(x: np.ndarray, what: str, scaling: Scaling) -> np.ndarray:
    if x.dtype.kind in "iu":
        if scaling.scale is None:
            raise UserError(
                f"{what} is {x.dtype}: say how the model wants it scaled, --input-scale 1/255 "
                "(input_scale=1/255) for a model trained on [0, 1], 1 for raw 0..255"
            )
    elif x.dtype.kind != "f":
        raise UserError(f"{what} has dtype {x.dtype}: give integer pixels or float32 values")
    y: np.ndarray = x.astype(np.float32)
    if scaling.scale is not None:
        y = y * np.float32(scaling.scale)
    if scaling.mean:
        y = y - np.asarray(scaling.mean, dtype=np.float32)
    if scaling.std:
        y = y / np.asarray(scaling.std, dtype=np.float32)
    return y.astype(np.float32)


# -- labels, by task ----------------------------------------------------------------------------

Labels = np.ndarray | list[Detections]


def prepare_labels(
    y: Any, model: ModelDescription, samples: int, num_classes: int, image_size: tuple[int, int]
) -> Labels:
    """Labels of the kind the task needs: class indices (classification), target values
    (regression), (H, W) class masks (segmentation), per-image boxes (detection: a list of
    (K, 5) arrays `x1, y1, x2, y2, class` in input pixels, or a JSON file of them)."""
    task = model.task
    if task is Task.RAW:
        raise UserError("a raw model has no labels to score: leave the labels out")
    if task is Task.DETECTION:
        return _detection_labels(y, samples, num_classes, image_size)
    y = np.asarray(load_array(y, "evaluation labels") if isinstance(y, (str, Path)) else y)
    if len(y) != samples:
        raise UserError(f"evaluation data has {samples} samples but {len(y)} labels")
    if task is Task.REGRESSION:
        if y.dtype.kind not in "iuf":
            raise UserError(f"regression labels must be numbers, got {y.dtype}")
        values: np.ndarray = y.astype(np.float32)
        return values
    if task is Task.SEGMENTATION:
        if y.ndim != 3 or y.dtype.kind not in "iub":
            raise UserError(
                f"segmentation labels must be integer class masks (N, H, W), got {y.dtype} "
                f"{y.shape}"
            )
        masks: np.ndarray = y.astype(np.int64)
        return masks
    if y.ndim == 2 and y.shape[1] == num_classes:
        y = y.argmax(axis=1)  # one-hot
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise UserError(
            f"classification labels must be integer class indices of shape (N,), got {y.dtype} "
            f"{y.shape}"
        )
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise UserError(
            f"evaluation label {int(y[bad][0])} is out of range: the model has {num_classes} "
            f"classes (0..{num_classes - 1})"
        )
    classes: np.ndarray = y.astype(np.int64)
    return classes


def _detection_labels(
    y: Any, samples: int, num_classes: int, size: tuple[int, int]
) -> list[Detections]:
    if isinstance(y, (str, Path)):
        path = Path(y)
        try:
            y = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"detection labels {path}: not a readable JSON file ({exc})") from None
    if isinstance(y, np.ndarray) or not isinstance(y, (list, tuple)):
        raise UserError(
            "detection labels must be a list with one (K, 5) array per image: "
            "x1, y1, x2, y2, class in input pixels"
        )
    if len(y) != samples:
        raise UserError(f"evaluation data has {samples} images but {len(y)} label entries")
    height, width = size
    out = []
    for n, boxes in enumerate(y):
        a = np.asarray(boxes, dtype=np.float64).reshape(-1, 5) if len(boxes) else np.zeros((0, 5))
        if a.ndim != 2 or a.shape[1] != 5:
            raise UserError(f"detection labels of image {n}: rows must be x1, y1, x2, y2, class")
        x1, y1, x2, y2, c = a.T
        outside = (x1 < 0) | (y1 < 0) | (x2 > width) | (y2 > height) | (x2 <= x1) | (y2 <= y1)
        if outside.any():
            k = int(np.flatnonzero(outside)[0])
            raise UserError(
                f"detection label {k} of image {n} has box {a[k, :4].tolist()} outside the "
                f"{width}x{height} input (or empty): boxes are x1, y1, x2, y2 in input pixels"
            )
        if ((c < 0) | (c >= num_classes) | (c != np.round(c))).any():
            raise UserError(
                f"detection labels of image {n}: class must be an integer 0..{num_classes - 1}"
            )
        out.append(Detections(a[:, :4].astype(np.float32), np.ones(len(a)), c.astype(np.int64)))
    return out
