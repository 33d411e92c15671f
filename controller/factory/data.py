"""Calibration and evaluation data: NumPy arrays or IDX files, checked against the model.

Images are brought to what the model takes: a missing trailing channel axis is added, so
`(N, 28, 28)` from an IDX file feeds a model whose input is `(N, 28, 28, 1)`, and values are
multiplied by the `scale` the user states. Integer pixels without a stated scale are refused:
whether a model wants 0..255 or 0..1 cannot be guessed, and a wrong guess scores as garbage.
Every mismatch is a one-line `UserError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import read_idx


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


def prepare_images(
    x: np.ndarray, input_shape: list[int | None], what: str, scale: float | None = None
) -> np.ndarray:
    """Scale and reshape `x` to the model's input (`input_shape` includes the batch axis)."""
    x = np.asarray(x)
    if x.size == 0 or len(x) == 0:
        raise UserError(f"{what} is empty: give at least one sample")
    if np.issubdtype(x.dtype, np.integer):
        if scale is None:
            raise UserError(
                f"{what} is {x.dtype}: say how the model wants it scaled, --input-scale 1/255 "
                "(input_scale=1/255) for a model trained on [0, 1], 1 for raw 0..255"
            )
        x = x.astype(np.float32) * np.float32(scale)
    elif not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{what} has dtype {x.dtype}: give integer pixels or float32 values")
    elif scale is not None:
        x = x.astype(np.float32) * np.float32(scale)
    sample_shape = list(input_shape[1:])
    if x.ndim == len(sample_shape) and sample_shape and sample_shape[-1] == 1:
        x = x[..., None]  # (N, H, W) -> (N, H, W, 1)
    got = list(x.shape[1:])
    if len(got) != len(sample_shape) or any(
        want is not None and want != have for want, have in zip(sample_shape, got, strict=True)
    ):
        raise UserError(
            f"{what} has samples of shape {tuple(got)} but the model takes "
            f"{tuple('?' if d is None else d for d in sample_shape)}: reshape the data or "
            "check that it belongs to this model"
        )
    if not np.isfinite(x).all():
        raise UserError(f"{what} contains NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def prepare_labels(y: np.ndarray, num_classes: int, samples: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes:
        y = y.argmax(axis=1)  # one-hot
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserError(
            f"evaluation labels must be integer class indices of shape (N,), got {y.dtype} "
            f"{y.shape}"
        )
    if len(y) != samples:
        raise UserError(f"evaluation data has {samples} samples but {len(y)} labels")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise UserError(
            f"evaluation label {int(y[bad][0])} is out of range: the model has {num_classes} "
            f"classes (0..{num_classes - 1})"
        )
    return y.astype(np.int64)
