"""IDX files (the MNIST / Fashion-MNIST format), read into NumPy arrays.

Both sides read them: the variant factory for calibration and evaluation data, the agent as a
labeled frame source. Gzipped files (`.gz`) are read transparently.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import TYPE_CHECKING

from lepton_edge.shared.errors import UserError

if TYPE_CHECKING:
    import numpy as np

#: Where Debian's `dataset-fashion-mnist` puts the data set.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes; raise `UserError` naming `name` when they are not IDX."""
    import numpy as np

    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise UserError(f"{name} is not an IDX file (bad magic number)")
    dtype = np.dtype(_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{name} is truncated: header needs {header} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape)) if shape else 0
    if len(data) - header != count * dtype.itemsize:
        raise UserError(
            f"{name}: header says {shape} ({count * dtype.itemsize} bytes) but "
            f"{len(data) - header} bytes follow"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped); raise `UserError` if unreadable or malformed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    return parse_idx(data, str(path))


def fashion_mnist(
    split: str = "t10k", root: Path = FASHION_MNIST_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of one split: `train` or `t10k`."""
    images = root / f"{split}-images-idx3-ubyte.gz"
    if not images.exists():
        raise UserError(
            f"Fashion-MNIST not found at {root}: install it with apt-get install dataset-fashion-mnist"
        )
    return read_idx(images), read_idx(root / f"{split}-labels-idx1-ubyte.gz")
