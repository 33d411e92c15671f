"""Safe tar extraction: the archives the "data" filter exists for are refused whole, on our own
fallback path (the only one on Python < 3.11.4) and on the stdlib filter where it exists."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lepton_edge.controller.archive import HAS_DATA_FILTER, ArchiveError, extract_tar
from tests.controller.conftest import AUTH

#: Our own path always; the stdlib filter too where this Python has it (3.11.4 and newer).
PATHS = [False, True] if HAS_DATA_FILTER else [False]


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


MALICIOUS: dict[str, tuple[Callable[[], bytes], str]] = {
    "path traversal": (lambda: _tar(_file("ok.txt"), _file("../evil.txt")), "outside the target"),
    "nested traversal": (lambda: _tar(_file("a/../../evil.txt")), "outside the target"),
    "absolute path": (lambda: _tar(_file("/tmp/evil.txt")), "absolute path"),
    "symlink out": (
        lambda: _tar(_special("link", tarfile.SYMTYPE, "/etc"), _file("link/passwd")),
        "is a link",
    ),
    "hard link": (lambda: _tar(_special("hard", tarfile.LNKTYPE, "/etc/passwd")), "is a link"),
    "device file": (lambda: _tar(_special("dev", tarfile.CHRTYPE)), "device or special"),
    "fifo": (lambda: _tar(_special("fifo", tarfile.FIFOTYPE)), "device or special"),
    "too large": (lambda: _tar(_file("big.bin", b"\0" * 2048)), "unpacks to 2048 bytes"),
    "not a tar": (lambda: b"this is not an archive", "not a readable tar archive"),
}


@pytest.mark.parametrize("use_data_filter", PATHS)
@pytest.mark.parametrize("case", list(MALICIOUS))
def test_malicious_archives_are_refused_whole(
    case: str, use_data_filter: bool, tmp_path: Path
) -> None:
    make, reason = MALICIOUS[case]
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match=reason) as err:
        extract_tar(make(), dest, max_bytes=1024, use_data_filter=use_data_filter)
    assert "\n" not in str(err.value)
    assert list(dest.iterdir()) == []  # nothing extracted, not even the harmless member
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("use_data_filter", PATHS)
def test_regular_files_and_folders_are_extracted(use_data_filter: bool, tmp_path: Path) -> None:
    folder = tarfile.TarInfo("bundle")
    folder.type = tarfile.DIRTYPE
    archive = _tar(
        (folder, b""), _file("bundle/manifest.json", b"{}"), _file("./bundle/a.onnx", b"\1\2")
    )
    extract_tar(archive, tmp_path, max_bytes=1024, use_data_filter=use_data_filter)
    assert (tmp_path / "bundle" / "manifest.json").read_bytes() == b"{}"
    assert (tmp_path / "bundle" / "a.onnx").read_bytes() == b"\1\2"


@pytest.mark.parametrize("path", ["/api/v1/bundles", "/api/v1/bundles/build?model_name=m"])
def test_upload_of_a_traversal_archive_is_a_400_with_one_line(
    client: TestClient, path: str
) -> None:
    archive = _tar(_file("model.onnx"), _file("../../escaped.onnx"))
    r = client.post(path, content=archive, headers={**AUTH, "Content-Type": "application/gzip"})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert "outside the target folder" in detail and "\n" not in detail
