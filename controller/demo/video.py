"""Video files the project writes itself (PyAV), for the demo's camera and the tests."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_video(path: Path, frames: Iterable[np.ndarray], fps: int = 30) -> Path:
    """Encode RGB frames (H, W, 3) uint8 as MPEG-4 (FFmpeg's own encoder: no system codecs)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream("mpeg4", rate=Fraction(fps, 1))
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.bit_rate = 4_000_000
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        if stream is not None:
            container.mux(stream.encode(None))
    return path
