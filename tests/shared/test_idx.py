import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import FASHION_MNIST_DIR, fashion_mnist, parse_idx, read_idx


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize(
    ("dtype", "code"), [(np.uint8, 0x08), (np.int32, 0x0C), (np.float32, 0x0D)]
)
def test_round_trip(tmp_path: Path, dtype: type, code: int) -> None:
    array = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    plain = tmp_path / "x.idx"
    plain.write_bytes(idx_bytes(array, code))
    zipped = tmp_path / "x.idx.gz"
    zipped.write_bytes(gzip.compress(idx_bytes(array, code)))
    for path in (plain, zipped):
        got = read_idx(path)
        assert got.dtype == np.dtype(dtype) and np.array_equal(got, array)


@pytest.mark.parametrize(
    "data",
    [b"", b"PK\x03\x04", bytes([0, 0, 8, 2, 0, 0, 0, 2]), bytes([0, 0, 8, 1, 0, 0, 0, 3, 1])],
)
def test_not_idx_is_a_user_error(data: bytes) -> None:
    with pytest.raises(UserError):
        parse_idx(data)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read"):
        read_idx(tmp_path / "nope.gz")


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_test_split() -> None:
    x, y = fashion_mnist("t10k")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
