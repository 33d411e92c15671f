"""Video through PyAV (FFmpeg's own decoders, one wheel with no system libraries): a file,
a V4L2 camera (`/dev/videoN`) or an RTSP/HTTP stream, decoded on a thread of its own.

A live source keeps only the newest frame, so a model slower than the camera never builds
a backlog; each frame it replaced unread counts in `skipped`. A file is read in order,
paced at its own frame rate or flat out, optionally looping. A dropped stream (or camera)
is reopened with exponential backoff, and each loss and recovery is reported through
`on_event`, as the MQTT link reports its own.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.agent.sources.base import Frame, Source
from lepton_edge.shared.errors import UserError

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
#: Frames from this size up are decoded with FFmpeg's threads; below, one thread is enough
#: and leaves the other cores to the model.
HD_PIXELS = 1280 * 720
#: (kind, reason): "lost", "reconnected", "ended", "error".
SourceEvent = Callable[[str, str], None]


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise UserError(
            "video sources need PyAV: pip install 'lepton-edge[video]' (or pip install av)"
        ) from None
    return av


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return exc.strerror
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


class VideoSource(Source):
    """Frames (1, H, W, 3) RGB uint8 from `url`: a file path, `/dev/videoN` or a stream URL."""

    def __init__(
        self,
        url: str,
        *,
        loop: bool = False,
        pace: bool = True,
        on_event: SourceEvent | None = None,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = str(url)
        self.camera = self.url.startswith("/dev/video")
        self.stream = self.url.lower().startswith(STREAM_SCHEMES)
        self.live = self.camera or self.stream
        self.name = self.url if self.live else Path(self.url).name
        self.loop = loop
        self.pace = pace
        self.on_event = on_event
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.timeout_s = timeout_s
        self.decoded = 0
        self.reconnects = 0
        self.last_error: str | None = None
        self._av = _av()
        self._newest: Frame | None = None
        self._slot = threading.Condition()
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        if not self.stream:  # local: a wrong path or a bad file is a setting to fix, now
            self._check_local()
        self._thread = threading.Thread(target=self._run, name=f"video-{self.name}", daemon=True)
        self._thread.start()

    # --- the engine's side ---------------------------------------------------------------------

    def read(self, timeout: float) -> Frame | None:
        if not self.live:
            try:
                frame = self._queue.get(timeout=timeout)
            except queue.Empty:
                return None
            if frame is None:  # the end of a file that does not loop
                self.done = True
            return frame
        with self._slot:
            if self._newest is None:
                self._slot.wait(timeout)
            frame, self._newest = self._newest, None
        return frame

    def close(self) -> None:
        super().close()
        self._stop.set()
        with self._slot:
            self._slot.notify_all()
        while True:  # unblock a decoder waiting to hand over a file's frame
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(5)

    # --- the decoder thread ---------------------------------------------------------------------

    def _check_local(self) -> None:
        if self.camera:
            if not os.path.exists(self.url):
                raise UserError(
                    f"camera {self.url} does not exist: `ls /dev/video*` lists the cameras here"
                )
            return
        if not Path(self.url).is_file():
            raise UserError(f"video file {self.url} does not exist: check engine.source_path")
        try:
            with self._open() as container:
                if not container.streams.video:
                    raise UserError(f"{self.url} has no video stream")
                next(container.decode(video=0))
        except StopIteration:
            raise UserError(f"video file {self.url} has no frames (empty or truncated)") from None
        except (self._av.FFmpegError, OSError, ValueError) as exc:
            raise UserError(f"cannot read video file {self.url}: {_reason(exc)}") from None

    def _open(self) -> Any:
        options: dict[str, str] = {}
        fmt = None
        if self.camera:
            fmt = "v4l2"
        elif self.url.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
        return self._av.open(
            self.url, format=fmt, options=options, timeout=(self.timeout_s, self.timeout_s)
        )

    def _emit(self, kind: str, reason: str) -> None:
        (log.warning if kind in ("lost", "error") else log.info)("%s: %s", self.name, reason)
        if self.on_event is not None:
            try:
                self.on_event(kind, reason)
            except Exception:
                log.exception("video source event listener failed")

    def _run(self) -> None:
        delay = self.reconnect_min_s
        lost = False
        while not self._stop.is_set():
            try:
                container = self._open()
            except (self._av.FFmpegError, OSError, ValueError) as exc:
                what = "camera" if self.camera else "stream" if self.stream else "video file"
                reason = f"{what} {self.name} cannot be opened: {_reason(exc)}"
                if not self.live:
                    self._finish(reason)
                    return
                if not lost or reason != self.last_error:
                    self._emit("lost", f"{reason}; retrying with backoff")
                lost, self.last_error = True, reason
                self._stop.wait(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            if lost:
                self.reconnects += 1
                self._emit("reconnected", f"{self.name} is back (reconnect {self.reconnects})")
                lost, delay = False, self.reconnect_min_s
            try:
                ended = self._decode(container)
            except (self._av.FFmpegError, OSError, ValueError) as exc:
                reason = f"{self.name}: {_reason(exc)}"
                self.last_error = reason
                if not self.live:
                    self._finish(f"video file {reason} (corrupt or truncated?)")
                    return
                self._emit("lost", f"{reason}; reconnecting")
                lost = True
                continue
            finally:
                container.close()
            if self._stop.is_set():
                return
            if self.live:
                self._emit("lost", f"{self.name} ended; reconnecting")
                lost = True
            elif not (ended and self.loop):
                self._finish(None)
                return

    def _decode(self, container: Any) -> bool:
        """Decode until the end (True) or until stopped (False)."""
        stream = container.streams.video[0]
        if (stream.codec_context.width or 0) * (stream.codec_context.height or 0) >= HD_PIXELS:
            stream.thread_type = "AUTO"  # big frames: decode on several cores; small: one
        rate = float(stream.average_rate or 0) if self.pace and not self.live else 0.0
        period = 1.0 / rate if rate > 0 else 0.0
        start = time.monotonic()
        for n, decoded in enumerate(container.decode(stream)):
            if self._stop.is_set():
                return False
            image: np.ndarray = decoded.to_ndarray(format="rgb24")
            frame = Frame(image=image[None], index=self.decoded, origin=self.name)
            self.decoded += 1
            if self.live:
                with self._slot:
                    if self._newest is not None:
                        self.skipped += 1
                    self._newest = frame
                    self._slot.notify()
                continue
            if period:
                wait = start + n * period - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    return False
            self._hand_over(frame)
        return True

    def _hand_over(self, frame: Frame | None) -> None:
        """Queue a file's frame (None: its end) for the engine, waiting while it is busy."""
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.1)
                return
            except queue.Full:
                continue

    def _finish(self, error: str | None) -> None:
        """A file's end: say why if it was an error, then let the engine see the end."""
        if error is not None:
            self.last_error = error
            self._emit("error", error)
        self._hand_over(None)
