"""Frames posted by applications on the box, for the local endpoint."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from lepton_edge.agent.sources.base import Frame, Result, Source


@dataclass
class _Pending:
    frame: Frame
    done: threading.Event = field(default_factory=threading.Event)
    result: Result | None = None


class QueueSource(Source):
    """Frames posted by applications on the box (the local endpoint); bounded, so a flood of
    requests is refused rather than queued without limit."""

    name = "local"

    def __init__(self, maxsize: int = 64) -> None:
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize)
        self._count = 0

    def submit(
        self, data: np.ndarray | None = None, timeout: float = 10.0, image: np.ndarray | None = None
    ) -> Result:
        """Queue a tensor batch, or images (N, H, W, C) for the pipeline, and wait for the
        result (raises `TimeoutError`, `queue.Full`)."""
        pending = _Pending(Frame(data, image=image, index=self._count, origin=self.name))
        self._count += 1

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
