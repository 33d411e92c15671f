"""Images the project renders itself, with exact boxes: the reference detector's data.

Each image is `SIZE` x `SIZE` RGB uint8 with a noisy, shaded background and one to four
non-overlapping objects of three classes (square, disc, triangle) in random colours and
sizes. Deterministic for a seed, NumPy only, so tests, benches and the demo need no dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 128
CLASSES = ("square", "disc", "triangle")
MIN_SIDE, MAX_SIDE = 16, 44


def _background(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(40, 200, 3)
    ramp = np.linspace(-30, 30, SIZE)[None, :, None] * rng.uniform(-1, 1)
    noise = rng.normal(0, 12, (SIZE, SIZE, 3))
    image: np.ndarray = (base + ramp + noise).astype(np.float64)
    return image


def _mask(kind: int, x1: int, y1: int, side: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    u, v = (xx - x1) / side, (yy - y1) / side  # 0..1 inside the box
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    if kind == 0:
        return np.asarray(inside)
    if kind == 1:
        return np.asarray((u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25)
    return np.asarray(inside & (np.abs(u - 0.5) * 2 <= v))  # apex at the top, base at the bottom


def render(count: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """`count` images (N, SIZE, SIZE, 3) uint8 and per image a (K, 5) float32 array of
    x1, y1, x2, y2, class in pixels (boxes tight around each shape)."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    boxes: list[np.ndarray] = []
    for n in range(count):
        image = _background(rng)
        placed: list[tuple[int, int, int, int]] = []
        rows = []
        for _ in range(int(rng.integers(1, 5))):
            for _attempt in range(20):
                side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
                x1, y1 = (int(v) for v in rng.integers(0, SIZE - side, 2))
                box = (x1, y1, x1 + side, y1 + side)
                if all(
                    box[2] + 2 <= p[0]
                    or p[2] + 2 <= box[0]
                    or box[3] + 2 <= p[1]
                    or p[3] + 2 <= box[1]
                    for p in placed
                ):
                    break
            else:
                continue
            kind = int(rng.integers(0, len(CLASSES)))
            colour = rng.uniform(0, 255, 3)
            while np.abs(colour - image[y1 + side // 2, x1 + side // 2]).mean() < 60:
                colour = rng.uniform(0, 255, 3)  # keep every shape visible
            mask = _mask(kind, x1, y1, side)
            image[mask] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
            ys, xs = np.nonzero(mask)
            placed.append(box)
            rows.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, kind])
        images[n] = np.clip(image, 0, 255).astype(np.uint8)
        boxes.append(np.asarray(rows, dtype=np.float32).reshape(-1, 5))
    return images, boxes


def _shape(kind: int, side: int) -> np.ndarray:
    """(side, side) mask of one shape filling its box."""
    yy, xx = np.mgrid[0:side, 0:side]
    u, v = (xx + 0.5) / side, (yy + 0.5) / side
    if kind == 0:
        return np.ones((side, side), dtype=bool)
    if kind == 1:
        return np.asarray((u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25)
    return np.asarray(np.abs(u - 0.5) * 2 <= v)


@dataclass
class _Mover:
    kind: int
    side: int
    mask: np.ndarray
    colour: np.ndarray
    pos: np.ndarray
    vel: np.ndarray
    shown: int  # first frame it is in view
    gone: int  # first frame it is not any more


def scene(
    count: int, width: int = 640, height: int = 480, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A camera's view: `count` frames (height, width, 3) uint8 of one noisy background with
    up to three shapes gliding across it, bouncing off the edges; each shape comes into view
    and leaves again on its own schedule (the 'object appeared / left' case). Per frame a
    (K, 5) array x1, y1, x2, y2, class in pixels. Objects are sized so that, letterboxed to
    the detector's 128 pixels, they look like its training data."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 180, 3)
    ramp = np.linspace(-30, 30, width)[None, :, None] * rng.uniform(-1, 1)
    background = np.clip(base + ramp + rng.normal(0, 12, (height, width, 3)), 0, 255)
    scale = max(width, height) / SIZE
    objects: list[_Mover] = []
    for i in range(3):
        side = int(rng.integers(int(MIN_SIDE * scale * 1.2), int(MAX_SIDE * scale)))
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - base).mean() < 70:
            colour = rng.uniform(0, 255, 3)
        shown = int(rng.integers(0, max(1, count // 3))) if i else 0
        objects.append(
            _Mover(
                kind=i % len(CLASSES),
                side=side,
                mask=_shape(i % len(CLASSES), side),
                colour=colour,
                pos=rng.uniform([0, 0], [width - side, height - side]),
                vel=rng.uniform(-1, 1, 2) * scale * 0.6,
                shown=shown,
                gone=shown + int(rng.integers(count // 3, count + 1)),
            )
        )
    frames = []
    for n in range(count):
        image = background.copy()
        rows = []
        for o in objects:
            side, pos = o.side, o.pos
            if o.shown <= n < o.gone:
                x1, y1 = int(pos[0]), int(pos[1])
                region = image[y1 : y1 + side, x1 : x1 + side]
                region[o.mask] = o.colour
                rows.append([x1, y1, x1 + side, y1 + side, o.kind])
            pos += o.vel
            for axis, limit in ((0, width - side), (1, height - side)):
                if not 0 <= pos[axis] <= limit:
                    o.vel[axis] *= -1
                    pos[axis] = min(max(pos[axis], 0), limit)
        frames.append((image.astype(np.uint8), np.asarray(rows, np.float32).reshape(-1, 5)))
    return frames
