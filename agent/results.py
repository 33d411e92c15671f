"""Inference results onto MQTT: `lepton/v1/dev/{id}/result`, rate-limited, optionally only
on change, with a small JPEG of a detector's frame now and then.

Results are a stream (QoS 0, dropped while offline); telemetry stays the durable channel.
A box that needs every result sets `reliable`, which sends them through the outbox (QoS 1,
kept through outages). Counts of what was published and held back go into telemetry.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lepton_edge.agent.pipeline import Answer, Pipeline
from lepton_edge.agent.sources import Frame, Result
from lepton_edge.shared.messages import (
    ClassArea,
    Detection,
    InferenceResult,
    LabelScore,
    TensorSummary,
    encode,
)

log = logging.getLogger(__name__)

#: Box colours of a thumbnail, by class index (RGB).
_COLOURS = np.asarray(
    [(255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 120, 255)], np.uint8
)


class ResultSettings(BaseModel):
    """Publishing inference results (`[results]` in agent.toml)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="publish results on …/result")
    max_per_s: float = Field(default=10.0, gt=0, description="at most this many per second")
    changes_only: bool = Field(
        default=False,
        description="publish only when the top class (classifier) or the set of detected "
        "classes (detector, segmenter) changes: 'object appeared / left'",
    )
    reliable: bool = Field(
        default=False, description="send through the outbox (QoS 1, none lost) instead of QoS 0"
    )
    top_k: int = Field(default=3, ge=1, le=100, description="labels per classification")
    thumbnail_interval_s: float = Field(
        default=5.0, ge=0, description="a JPEG of the frame with its boxes this often; 0 = never"
    )
    thumbnail_width: int = Field(default=320, ge=32, le=1280)


class ResultPublisher:
    """Turns the engine's results into `InferenceResult` messages and sends them.

    `send(payload) -> bool` publishes at QoS 0 (False: not connected, the result is lost);
    `send_reliable(make)` queues `make(seq) -> bytes` in the outbox. Called on the engine's
    delivery thread; the counters are read from the telemetry thread."""

    def __init__(
        self,
        device_id: str,
        settings: ResultSettings,
        *,
        send: Callable[[bytes], bool],
        send_reliable: Callable[[Callable[[int], bytes]], object],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device_id = device_id
        self.settings = settings
        self._send = send
        self._send_reliable = send_reliable
        self._clock = clock
        self._monotonic = monotonic
        self._period = 1.0 / settings.max_per_s
        self._next_at = 0.0
        self._next_thumbnail = 0.0
        self._last_classes: frozenset[int] | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self._counts = {"published": 0, "suppressed": 0, "lost": 0}
        self._jpeg: Callable[[np.ndarray], bytes] | None = jpeg_encoder()
        self.latest: InferenceResult | None = None

    def take_counts(self) -> dict[str, int]:
        """Published, suppressed and lost (QoS 0 while offline) since the last call."""
        with self._lock:
            counts, self._counts = self._counts, dict.fromkeys(self._counts, 0)
        return counts

    def __call__(self, frame: Frame, result: Result) -> None:
        if result.error is not None or result.pipeline is None:
            return
        for i, answer in enumerate(result.answers):
            self._one(frame, result, result.pipeline, i, answer)

    def _one(
        self, frame: Frame, result: Result, pipeline: Pipeline, i: int, answer: Answer
    ) -> None:
        classes = answer.classes()
        if self.settings.changes_only and classes is not None and classes == self._last_classes:
            self._count("suppressed")
            return
        now = self._monotonic()
        if now < self._next_at:
            self._count("suppressed")
            return
        self._next_at = max(self._next_at + self._period, now)
        self._last_classes = classes
        thumbnail = None
        interval = self.settings.thumbnail_interval_s
        if interval and frame.image is not None and now >= self._next_thumbnail:
            thumbnail = self._thumbnail(frame.image[i], answer)
            self._next_thumbnail = now + interval
        height, width = frame.image.shape[1:3] if frame.image is not None else (0, 0)
        fields = answer_fields(answer, pipeline)

        def make(seq: int) -> bytes:
            message = InferenceResult(
                device_id=self.device_id,
                ts=self._clock(),
                seq=seq,
                frame=frame.index + i,
                source=frame.origin or "unknown",
                bundle_id=pipeline.bundle_id or None,
                variant=result.variant,
                task=pipeline.task.value,
                latency_ms=round(result.latency_s * 1e3, 3),
                width=int(width),
                height=int(height),
                thumbnail_jpeg=thumbnail,
                **fields,
            )
            self.latest = message
            return encode(message)

        if self.settings.reliable:
            self._send_reliable(make)
            self._count("published")
            return
        self._seq += 1
        self._count("published" if self._send(make(self._seq)) else "lost")

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def _thumbnail(self, image: np.ndarray, answer: Answer) -> str | None:
        if self._jpeg is None:
            return None
        step = max(
            1, -(-image.shape[1] // self.settings.thumbnail_width)
        )  # ceil: at most thumbnail_width
        small = np.ascontiguousarray(image[::step, ::step])
        if small.shape[2] == 1:
            small = np.repeat(small, 3, axis=2)
        small = small[: small.shape[0] & ~1, : small.shape[1] & ~1].copy()  # even, for JPEG 4:2:0
        if answer.detections is not None:
            for box, cls in zip(answer.detections.boxes, answer.detections.classes, strict=True):
                _draw_box(small, box / step, _COLOURS[int(cls) % len(_COLOURS)])
        try:
            return base64.b64encode(self._jpeg(small)).decode()
        except Exception as exc:  # never let a thumbnail stop a result
            log.warning("thumbnail failed: %s", exc)
            return None


def answer_fields(answer: Answer, pipeline: Pipeline) -> dict[str, Any]:
    """The task's fields of an `InferenceResult` (also the local endpoint's answer)."""
    label = pipeline.label
    if answer.top is not None:
        return {"top": [LabelScore(index=i, label=label(i), score=s) for i, s in answer.top]}
    if answer.detections is not None:
        found = answer.detections
        return {
            "detections": [
                Detection(
                    index=int(c),
                    label=label(int(c)),
                    score=float(np.clip(s, 0.0, 1.0)),
                    box=(
                        round(float(b[0]), 1),
                        round(float(b[1]), 1),
                        round(float(b[2]), 1),
                        round(float(b[3]), 1),
                    ),
                )
                for b, s, c in zip(found.boxes, found.scores, found.classes, strict=True)
            ]
        }
    if answer.areas is not None:
        return {
            "areas": [
                ClassArea(index=c, label=label(c), fraction=min(1.0, share))
                for c, share in sorted(answer.areas.items())
            ]
        }
    if answer.values is not None:
        return {"values": answer.values}
    return {
        "tensors": [
            TensorSummary(name=t.name, shape=list(t.shape), min=t.min, max=t.max, mean=t.mean)
            for t in answer.tensors or []
        ]
    }


def _box(b: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (round(float(v), 1) for v in b)
    return x1, y1, x2, y2


def _draw_box(image: np.ndarray, box: np.ndarray, colour: np.ndarray, width: int = 2) -> None:
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    x1, x2 = max(0, min(x1, w - 1)), max(0, min(x2, w - 1))
    y1, y2 = max(0, min(y1, h - 1)), max(0, min(y2, h - 1))
    image[y1 : y1 + width, x1 : x2 + 1] = colour
    image[max(y2 - width + 1, 0) : y2 + 1, x1 : x2 + 1] = colour
    image[y1 : y2 + 1, x1 : x1 + width] = colour
    image[y1 : y2 + 1, max(x2 - width + 1, 0) : x2 + 1] = colour


def jpeg_encoder() -> Callable[[np.ndarray], bytes] | None:
    """A JPEG encoder from PyAV (the video extra); None without it (no thumbnails)."""
    try:
        import av
    except ImportError:
        return None

    def encode_jpeg(image: np.ndarray) -> bytes:
        h, w = image.shape[:2]
        codec = av.CodecContext.create("mjpeg", "w")
        codec.width, codec.height = w, h
        codec.pix_fmt = "yuvj420p"
        codec.time_base = Fraction(1, 25)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj420p")
        packets = [*codec.encode(frame), *codec.encode(None)]
        return b"".join(bytes(p) for p in packets)

    return encode_jpeg
