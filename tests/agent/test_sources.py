"""Frame sources: IDX files, image folders, synthetic frames and the endpoint's queue."""

from __future__ import annotations

import gzip
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lepton_edge.agent.sources import (
    ArraySource,
    QueueSource,
    Result,
    SyntheticSource,
    idx_source,
    image_dir_source,
)
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import FASHION_MNIST_LABELS, fashion_mnist


def test_idx_source_defaults_to_labeled_fashion_mnist() -> None:
    src = idx_source(batch=4, loop=False, limit=3)
    x, y = fashion_mnist("t10k")
    frames = [src.read(0) for _ in range(4)]
    assert frames[3] is None and src.done
    first = frames[0]
    assert first is not None and first.label is not None
    # pixels as the file has them: the bundle's pipeline scales them, not the source
    assert first.image is not None and first.data is None
    assert first.image.shape == (4, 28, 28, 1) and first.image.dtype == np.uint8
    np.testing.assert_array_equal(first.image[..., 0], x[:4])
    assert first.label.tolist() == y[:4].tolist()


def test_idx_source_from_files_and_mismatched_labels(tmp_path: Path) -> None:
    images = tmp_path / "img.idx.gz"
    labels = tmp_path / "lab.idx"
    images.write_bytes(
        gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(8))
    )
    labels.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]))
    with pytest.raises(UserError, match="3 labels for 2 images"):
        idx_source(images, labels)
    with pytest.raises(UserError, match="not found"):
        idx_source(tmp_path / "missing.idx")
    src = idx_source(images)
    frame = src.read(0)
    assert frame is not None and frame.label is None and frame.image is not None
    assert frame.image.shape == (1, 2, 2, 1)


def test_image_folder_labels_from_folder_names(tmp_path: Path) -> None:
    x, y = fashion_mnist("t10k")
    for i in range(6):
        folder = tmp_path / (FASHION_MNIST_LABELS[y[i]] if i % 2 else str(y[i]))
        folder.mkdir(exist_ok=True)
        Image.fromarray(x[i]).resize((56, 56)).save(folder / f"{i}.png")
    src = image_dir_source(tmp_path, (28, 28), FASHION_MNIST_LABELS, channels=1)
    assert src.labeled and src.array.shape == (6, 28, 28, 1) and src.array.dtype == np.uint8
    assert sorted(src.labels.tolist()) == sorted(y[:6].tolist())  # type: ignore[union-attr]
    (tmp_path / "loose.png").write_bytes((tmp_path / str(y[0]) / "0.png").read_bytes())
    assert not image_dir_source(tmp_path, (28, 28)).labeled  # a file outside class folders


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        image_dir_source(tmp_path / "nope", (28, 28))
    with pytest.raises(UserError, match="no images"):
        image_dir_source(tmp_path, (28, 28))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image"):
        image_dir_source(tmp_path, (28, 28))


def test_synthetic_and_array_sources() -> None:
    src = SyntheticSource((28, 28, 1), batch=2)
    frame = src.read(0)
    assert frame is not None and frame.data.shape == (2, 28, 28, 1) and frame.label is None
    assert not src.labeled and not src.done
    with pytest.raises(UserError):
        ArraySource(np.zeros((0, 28, 28, 1)))


def test_queue_source_round_trip_and_close() -> None:
    q = QueueSource(maxsize=2)
    results: list[Result] = []

    def engine() -> None:
        frame = q.read(5)
        assert frame is not None and frame.reply is not None
        assert frame.data is not None
        frame.reply(Result("v", scores=frame.data.sum(axis=(1, 2, 3))[:, None]))

    t = threading.Thread(target=engine)
    t.start()
    results.append(q.submit(np.ones((1, 2, 2, 1), np.float32), timeout=5))
    t.join()
    assert results[0].scores is not None and results[0].scores.tolist() == [[4.0]]
    assert q.read(0.01) is None
    waiter = threading.Thread(target=lambda: results.append(q.submit(np.ones((1, 1)), 5)))
    waiter.start()
    while q._queue.empty():
        pass
    q.close()  # a stopped engine answers what is queued instead of leaving it to time out
    waiter.join()
    assert results[1].error == "the engine stopped"
