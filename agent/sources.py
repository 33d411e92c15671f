"""Frame sources: where the engine's inputs come from.

IDX files (Fashion-MNIST), a directory of images, a synthetic generator, and a queue the local
endpoint fills. Every source hands out float32 batches shaped like the model's input; labeled
ones carry the true class so the engine can report live accuracy.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import FASHION_MNIST_DIR, read_idx


@dataclass(slots=True)
class Result:
    """What happened to one frame: scores, or the error that stopped it."""

    variant: str | None
    scores: np.ndarray | None = None
    error: str | None = None
    latency_s: float = 0.0


@dataclass(slots=True)
class Frame:
    data: np.ndarray
    """float32 batch (N, *input_shape)"""
    label: np.ndarray | None = None
    """true classes (N,), when the source knows them"""
    reply: Callable[[Result], None] | None = None
    """who waits for this frame's result (the local endpoint)"""


class Source(ABC):
    """Hands frames to the engine; `done` once a finite source is exhausted."""

    labeled: bool = False
    done: bool = False

    @abstractmethod
    def read(self, timeout: float) -> Frame | None:
        """The next frame, or None when none came within `timeout` seconds."""

    def close(self) -> None:
        self.done = True


class NoFrames(Source):
    """Stands in until the model's input shape is known and the real source can be made."""

    def read(self, timeout: float) -> Frame | None:
        return None


class ArraySource(Source):
    """Frames cut from an in-memory array, looping forever unless `loop` is off."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        *,
        batch: int = 1,
        loop: bool = True,
        limit: int | None = None,
    ) -> None:
        if len(images) == 0:
            raise UserError("the frame source has no images")
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.labeled = self.labels is not None
        self.batch = batch
        self.loop = loop
        self.limit = limit
        self._pos = 0
        self._served = 0

    def read(self, timeout: float = 0.0) -> Frame | None:
        if self.done:
            return None
        if self.limit is not None and self._served >= self.limit:
            self.done = True
            return None
        n = len(self.images)
        if self._pos + self.batch > n:
            if not self.loop:
                self.done = True
                return None
            self._pos = 0
        i = self._pos
        self._pos += self.batch
        self._served += 1
        labels = None if self.labels is None else self.labels[i : i + self.batch]
        return Frame(self.images[i : i + self.batch], labels)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W[, C]) -> float32 in [0, 1] with a channel axis, as the bundle
    expects; floats are taken as already scaled."""
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
        x /= 255.0
    return x[..., None] if x.ndim == 3 else x


def idx_source(
    images: Path | None = None,
    labels: Path | None = None,
    *,
    batch: int = 1,
    loop: bool = True,
    limit: int | None = None,
) -> ArraySource:
    """Fashion-MNIST t10k by default; labels are used when given (or found next to the images)."""
    if images is None:
        images = FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"
        labels = labels or FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not Path(images).exists():
        raise UserError(f"IDX images {images} not found: point engine.source_path at an IDX file")
    x = to_model_input(read_idx(Path(images)))
    y = read_idx(Path(labels)) if labels is not None else None
    if y is not None and len(y) != len(x):
        raise UserError(f"{labels} has {len(y)} labels for {len(x)} images in {images}")
    return ArraySource(x, y, batch=batch, loop=loop, limit=limit)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".gif", ".webp"}


def image_dir_source(
    root: Path,
    input_shape: tuple[int, ...],
    class_names: list[str] | None = None,
    *,
    batch: int = 1,
    loop: bool = True,
) -> ArraySource:
    """Images under `root`, resized to the model's input; a file inside a folder named after a
    class (its index or its label) is labeled with it."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UserError("engine.source = images needs Pillow: pip install pillow") from None

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image directory {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    h, w = input_shape[0], input_shape[1]
    channels = input_shape[2] if len(input_shape) > 2 else 1
    mode = "L" if channels == 1 else "RGB"
    names = {n.lower(): i for i, n in enumerate(class_names or [])}
    images, labels = [], []
    for path in files:
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert(mode).resize((w, h)), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
        images.append(arr.reshape(h, w, channels))
        folder = path.parent.name.lower() if path.parent != root else ""
        labels.append(int(folder) if folder.isdigit() else names.get(folder, -1))
    x = np.stack(images).astype(np.float32) / 255.0
    labeled = all(label >= 0 for label in labels)
    return ArraySource(x, np.array(labels) if labeled else None, batch=batch, loop=loop)


class SyntheticSource(ArraySource):
    """Random frames of the model's input shape (no labels): load without a data set."""

    def __init__(
        self, input_shape: tuple[int, ...], *, batch: int = 1, seed: int = 0, pool: int = 64
    ) -> None:
        rng = np.random.default_rng(seed)
        super().__init__(rng.random((pool * batch, *input_shape), dtype=np.float32), batch=batch)


@dataclass
class _Pending:
    frame: Frame
    done: threading.Event = field(default_factory=threading.Event)
    result: Result | None = None


class QueueSource(Source):
    """Frames posted by applications on the box (the local endpoint); bounded, so a flood of
    requests is refused rather than queued without limit."""

    def __init__(self, maxsize: int = 64) -> None:
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize)

    def submit(self, data: np.ndarray, timeout: float = 10.0) -> Result:
        """Queue a batch and wait for its result (raises `TimeoutError`, `queue.Full`)."""
        pending = _Pending(Frame(data))

        def reply(result: Result) -> None:
            pending.result = result
            pending.done.set()

        pending.frame.reply = reply
        self._queue.put_nowait(pending.frame)
        if not pending.done.wait(timeout) or pending.result is None:
            raise TimeoutError(f"no result within {timeout:g} s")
        return pending.result

    def read(self, timeout: float) -> Frame | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        super().close()
        while True:  # nobody will run these: answer them instead of letting them time out
            try:
                frame = self._queue.get_nowait()
            except queue.Empty:
                return
            if frame.reply is not None:
                frame.reply(Result(None, error="the engine stopped"))
