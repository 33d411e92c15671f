"""A folder of image files, labeled by the folder each one sits in."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lepton_edge.agent.sources.arrays import ArraySource
from lepton_edge.shared.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".gif", ".webp"}


def image_dir_source(
    root: Path,
    size: tuple[int, int],
    class_names: list[str] | None = None,
    *,
    channels: int = 3,
    batch: int = 1,
    loop: bool = True,
) -> ArraySource:
    """Images under `root` as pixels, brought to one `size` (height, width) so they batch;
    the bundle's pipeline does the rest. A file inside a folder named after a class (its
    index or its label) is labeled with it."""
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
    h, w = size
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
    labeled = all(label >= 0 for label in labels)
    return ArraySource(
        np.stack(images),
        np.array(labels) if labeled else None,
        batch=batch,
        loop=loop,
        images=True,
        name=root.name,
    )
