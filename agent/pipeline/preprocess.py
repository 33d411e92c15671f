"""Frames into model inputs, exactly as the manifest's model description says.

One `Preprocessor` per bundle: every variant of a ladder is fed the same tensor, so a
precision switch never changes what the model sees. Vectorised NumPy: the resize is two
matrix products with precomputed (antialiased, linear) weights, cached per source size;
layout, channel order, scale, mean and std fold into one multiply-add.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lepton_edge.shared.manifest import ImageInput

#: Letterbox padding, in source pixel values: mid grey, as YOLO pads.
PAD_VALUE = 114.0
_LUMA = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)


class BadFrame(ValueError):
    """A frame the model's description cannot be applied to; the message says why."""


@dataclass(frozen=True)
class Geometry:
    """Where a source frame landed in the model's input: model pixels = source pixels *
    scale + pad, per axis. Maps boxes back into the source frame."""

    width: int
    height: int
    scale_x: float = 1.0
    scale_y: float = 1.0
    pad_x: float = 0.0
    pad_y: float = 0.0

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes (K, 4) in model input pixels -> source pixels, clipped to the frame."""
        scale = np.asarray([self.scale_x, self.scale_y] * 2, dtype=np.float32)
        pad = np.asarray([self.pad_x, self.pad_y] * 2, dtype=np.float32)
        limit = np.asarray([self.width, self.height] * 2, dtype=np.float32)
        out: np.ndarray = np.clip((boxes - pad) / scale, 0, limit)
        return out


@lru_cache(maxsize=64)
def _weights(source: int, target: int) -> np.ndarray:
    """(target, source) linear-interpolation weights; when shrinking, the filter widens with
    the ratio so every source pixel counts (antialiased, like Pillow's bilinear)."""
    ratio = source / target
    support = max(ratio, 1.0)
    centres = (np.arange(target) + 0.5) * ratio
    taps = np.arange(source) + 0.5
    w = np.clip(1.0 - np.abs(taps[None, :] - centres[:, None]) / support, 0.0, None)
    w /= w.sum(axis=1, keepdims=True)
    weights: np.ndarray = w.astype(np.float32)
    weights.setflags(write=False)
    return weights


def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W, C) -> (N, height, width, C) float32 (the input itself when it has that size)."""
    n, h, w, c = images.shape
    if (h, w) == (height, width):
        return images  # as it is: the scaling that follows makes the float copy
    x = images.astype(np.float32, copy=False)
    if h != height:
        x = (_weights(h, height) @ x.reshape(n, h, w * c)).reshape(n, height, w, c)
    if w != width:
        x = _weights(w, width) @ x  # (width, w) @ (N, height, w, C) -> (N, height, width, C)
    return x


def _uniform(values: np.ndarray) -> np.ndarray | np.float32:
    """One float32 number when every channel has the same value, else the array."""
    return values[0] if np.all(values == values[0]) else values


class Preprocessor:
    """`ImageInput` applied to a batch of frames (N, H, W, 3) RGB or (N, H, W, 1) grey,
    uint8 or float -> the model's (N, ...) input, plus where the frames landed (for boxes)."""

    def __init__(self, spec: ImageInput, dtype: str = "float32") -> None:
        self.spec = spec
        self.dtype = np.dtype(dtype)
        channels = 1 if spec.pixel_format == "gray" else 3
        self.channels = channels
        scale = np.full(channels, spec.scale, dtype=np.float32)
        mean = np.asarray(spec.mean or [0.0], dtype=np.float32)
        std = np.asarray(spec.std or [1.0], dtype=np.float32)
        if mean.size not in (1, channels) or std.size not in (1, channels):
            raise BadFrame(
                f"mean {spec.mean} / std {spec.std} need 1 or {channels} values for "
                f"{spec.pixel_format} input"
            )
        # value * scale, minus mean, over std  ==  value * a - b, per channel; one number
        # when the channels agree (a mixed uint8 x float32[3] multiply is ~8x slower)
        self._a = _uniform(scale / std)
        self._b = _uniform(mean / std)
        self._shift = bool(np.any(self._b))

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, Geometry]:
        images = self._channels(frame)
        n, h, w = images.shape[:3]
        target_h, target_w = self.spec.size
        if self.spec.resize == "letterbox" and (h, w) != (target_h, target_w):
            s = min(target_h / h, target_w / w)
            new_h, new_w = max(1, round(h * s)), max(1, round(w * s))
            top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
            x = np.full((n, target_h, target_w, self.channels), PAD_VALUE, dtype=np.float32)
            x[:, top : top + new_h, left : left + new_w] = resize(images, new_h, new_w)
            geometry = Geometry(w, h, new_w / w, new_h / h, float(left), float(top))
        else:
            x = resize(images, target_h, target_w)
            geometry = Geometry(w, h, target_w / w, target_h / h)
        if isinstance(self._a, np.ndarray):
            x = x.astype(np.float32)  # a per-channel multiply is fast on floats only
            x *= self._a
        else:
            x = np.multiply(x, self._a, dtype=np.float32)  # one pass: to float and scaled
        if self._shift:
            x -= self._b
        if self.spec.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=self.dtype), geometry

    def _channels(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim != 4 or frames.shape[3] not in (1, 3) or 0 in frames.shape:
            raise BadFrame(
                f"frame of shape {'x'.join(map(str, frames.shape[1:]))} is not an image: "
                "send height x width x 3 (RGB) or height x width x 1 (grey)"
            )
        have = frames.shape[3]
        fmt = self.spec.pixel_format
        if fmt == "gray":
            if have == 3:
                return (frames.astype(np.float32) @ _LUMA)[..., None]
            return frames
        if have == 1:
            frames = np.repeat(frames, 3, axis=3)
        return frames[..., ::-1] if fmt == "bgr" else frames
