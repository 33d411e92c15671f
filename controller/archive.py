"""Safe unpacking of uploaded tar archives, the same on every supported Python.

`tarfile`'s "data" filter exists only from Python 3.11.4 (Debian 12 ships 3.11.2), so every
member is vetted here first with the same rules, and the whole archive is refused before
anything is written. Where the filter exists it is applied as well.
"""

from __future__ import annotations

import io
import posixpath
import shutil
import tarfile
from pathlib import Path

HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
MAX_MEMBERS = 10_000


class ArchiveError(ValueError):
    """An archive that cannot be unpacked safely; the message names the member and the rule."""


def _vet(member: tarfile.TarInfo) -> str:
    """The member's safe relative path, or `ArchiveError` saying why it is refused."""
    name = member.name
    if name.startswith("/"):
        raise ArchiveError(f"archive member {name!r} has an absolute path")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../"):
        raise ArchiveError(f"archive member {name!r} points outside the target folder")
    if member.issym() or member.islnk():
        raise ArchiveError(f"archive member {name!r} is a link; only files and folders are allowed")
    if not (member.isreg() or member.isdir()):
        raise ArchiveError(
            f"archive member {name!r} is a device or special file; only files and folders are allowed"
        )
    return normal


def extract_tar(
    archive: bytes, dest: Path, *, max_bytes: int, use_data_filter: bool = HAS_DATA_FILTER
) -> None:
    """Unpack a (gzipped) tar into `dest`: regular files and folders only, none outside `dest`,
    at most `max_bytes` unpacked. `use_data_filter=False` forces our own extraction (tested on
    every Python, since it is the only path on Python < 3.11.4)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise ArchiveError(f"the archive has {len(members)} members; at most {MAX_MEMBERS}")
            paths = [_vet(m) for m in members]
            total = sum(m.size for m in members if m.isreg())
            if total > max_bytes:
                raise ArchiveError(
                    f"the archive unpacks to {total} bytes; at most {max_bytes} are allowed"
                )
            if use_data_filter:
                tar.extractall(dest, filter="data")
                return
            for member, rel in zip(members, paths, strict=True):
                target = dest / rel
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has content
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, EOFError, OSError) as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ArchiveError(f"not a readable tar archive: {first_line}") from None
