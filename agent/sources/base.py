"""What every frame source hands the engine, and what the engine hands back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lepton_edge.agent.pipeline import Answer, Pipeline


@dataclass(slots=True)
class Result:
    """What happened to one frame: the outputs and their answers, or the error that stopped it."""

    variant: str | None
    scores: np.ndarray | None = None
    """the classification (first) output, float32 (N, ...)"""
    error: str | None = None
    latency_s: float = 0.0
    outputs: list[np.ndarray] = field(default_factory=list)
    """every output, in the model description's order"""
    answers: list[Answer] = field(default_factory=list)
    """one per batch item, as the task reads it (boxes in source pixels)"""
    pipeline: Pipeline | None = None
    """how the answers were read: task, labels, bundle"""


@dataclass(slots=True)
class Frame:
    """One batch for the engine: source pixels (`image`, pre-processed by the bundle's
    pipeline) or a tensor the model takes as it is (`data`)."""

    data: np.ndarray | None = None
    """float32 batch (N, *input_shape), fed as it is"""
    label: np.ndarray | None = None
    """true classes (N,), when the source knows them"""
    reply: Callable[[Result], None] | None = None
    """who waits for this frame's result (the local endpoint)"""
    image: np.ndarray | None = None
    """source pixels (N, H, W, C), RGB or grey, uint8"""
    index: int = 0
    """position of the (first) frame in its source"""
    origin: str = ""
    """where it came from, for results: a file name, a camera, a stream URL, `local`"""


class Source(ABC):
    """Hands frames to the engine; `done` once a finite source is exhausted. A live source
    counts in `skipped` the frames it replaced by a newer one before the engine took them."""

    labeled: bool = False
    done: bool = False
    skipped: int = 0
    name: str = ""

    @abstractmethod
    def read(self, timeout: float) -> Frame | None:
        """The next frame, or None when none came within `timeout` seconds."""

    def close(self) -> None:
        self.done = True


class NoFrames(Source):
    """Stands in until the model's input shape is known and the real source can be made."""

    def read(self, timeout: float) -> Frame | None:
        return None
