"""Frames cut from arrays in memory: IDX files (Fashion-MNIST) and synthetic tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lepton_edge.agent.sources.base import Frame, Source
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import FASHION_MNIST_DIR, read_idx


class ArraySource(Source):
    """Frames cut from an in-memory array, looping forever unless `loop` is off: images
    (N, H, W, C) uint8 for the pipeline when `images` is set, else float32 tensors as the
    model takes them."""

    def __init__(
        self,
        array: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        batch: int = 1,
        loop: bool = True,
        limit: int | None = None,
        images: bool = False,
        name: str = "array",
    ) -> None:
        if len(array) == 0:
            raise UserError("the frame source has no images")
        self.is_images = images
        self.array = np.ascontiguousarray(array, dtype=None if images else np.float32)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.labeled = self.labels is not None
        self.batch = batch
        self.loop = loop
        self.limit = limit
        self.name = name
        self._pos = 0
        self._served = 0

    def read(self, timeout: float = 0.0) -> Frame | None:
        if self.done:
            return None
        if self.limit is not None and self._served >= self.limit:
            self.done = True
            return None
        n = len(self.array)
        if self._pos + self.batch > n:
            if not self.loop:
                self.done = True
                return None
            self._pos = 0
        i = self._pos
        self._pos += self.batch
        self._served += 1
        labels = None if self.labels is None else self.labels[i : i + self.batch]
        cut = self.array[i : i + self.batch]
        if self.is_images:
            return Frame(image=cut, label=labels, index=i, origin=self.name)
        return Frame(cut, labels, index=i, origin=self.name)


def idx_source(
    images: Path | None = None,
    labels: Path | None = None,
    *,
    batch: int = 1,
    loop: bool = True,
    limit: int | None = None,
) -> ArraySource:
    """Fashion-MNIST t10k by default; labels are used when given (or found next to the images).
    Frames are the file's pixels; the bundle's pipeline scales them."""
    if images is None:
        images = FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"
        labels = labels or FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not Path(images).exists():
        raise UserError(f"IDX images {images} not found: point engine.source_path at an IDX file")
    x = read_idx(Path(images))
    if x.ndim == 3:
        x = x[..., None]
    y = read_idx(Path(labels)) if labels is not None else None
    if y is not None and len(y) != len(x):
        raise UserError(f"{labels} has {len(y)} labels for {len(x)} images in {images}")
    return ArraySource(
        x, y, batch=batch, loop=loop, limit=limit, images=True, name=Path(images).name
    )


class SyntheticSource(ArraySource):
    """Random tensors of the model's input shape (no labels): load without a data set."""

    def __init__(
        self, input_shape: tuple[int, ...], *, batch: int = 1, seed: int = 0, pool: int = 64
    ) -> None:
        rng = np.random.default_rng(seed)
        tensors = rng.random((pool * batch, *input_shape), dtype=np.float32)
        super().__init__(tensors, batch=batch, name="synthetic")
