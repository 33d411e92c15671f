"""Bundle storage: verify an uploaded bundle, keep its files content-addressed, index it.

A bundle is refused unless `shared.bundle.verify_bundle` accepts it with THIS controller's key
(the same check the agents and the factory make).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from sqlalchemy.orm import Session

from lepton_edge.controller.archive import ArchiveError, extract_tar
from lepton_edge.controller.tables import Bundle
from lepton_edge.shared.bundle import verify_bundle
from lepton_edge.shared.errors import BundleInvalid
from lepton_edge.shared.manifest import MANIFEST_FILE, Manifest
from lepton_edge.shared.signing import load_or_create_private_key


class BundleError(Exception):
    """A bundle that cannot be accepted; `status` is the HTTP answer (400, 409, 413, 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


#: What an upload may unpack to unless the caller says otherwise (a gzip bomb stops here).
MAX_UNPACKED_BYTES = 2 * 1024**3


def unpack(archive: bytes, dest: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> Path:
    """Unpack a (gzipped) tar of a bundle directory; return the folder with manifest.json."""
    try:
        extract_tar(archive, dest, max_bytes=max_bytes)
    except ArchiveError as exc:
        raise BundleError(400, f"refused: {exc}") from None
    candidates = sorted(dest.rglob(MANIFEST_FILE), key=lambda p: len(p.parts))
    if not candidates:
        raise BundleError(422, f"the archive has no {MANIFEST_FILE}")
    return candidates[0].parent


def pack(bundle_dir: Path) -> bytes:
    """A gzipped tar of a bundle directory (what `lepton models push` uploads)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for path in sorted(bundle_dir.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name)
    return buf.getvalue()


class BundleStore:
    def __init__(self, artifact_dir: Path, bundle_dir: Path, key_path: Path) -> None:
        self.artifact_dir = artifact_dir
        self.bundle_dir = bundle_dir
        self.key_path = key_path
        artifact_dir.mkdir(parents=True, exist_ok=True)
        bundle_dir.mkdir(parents=True, exist_ok=True)
        self.key = load_or_create_private_key(key_path)

    def artifact_path(self, sha256: str) -> Path:
        return self.artifact_dir / sha256

    def manifest_path(self, bundle_id: str) -> Path:
        return self.bundle_dir / bundle_id / MANIFEST_FILE

    def verify(self, src: Path) -> Manifest:
        """`shared.bundle.verify_bundle` with this controller's key; refusals are 422s."""
        try:
            return verify_bundle(src, self.key.public_key())
        except BundleInvalid as exc:
            raise BundleError(422, f"refused: {exc}") from None

    def add(self, session: Session, src: Path) -> tuple[Manifest, bool]:
        """Verify and store the bundle folder `src`; return (manifest, created)."""
        manifest = self.verify(src)
        existing = session.get(Bundle, manifest.bundle_id)
        if existing is not None:
            if existing.manifest.get("signature") == manifest.signature:
                return manifest, False
            raise BundleError(409, f"bundle {manifest.bundle_id} exists with different content")
        files = [(v.filename, v.sha256) for v in manifest.variants]
        if manifest.probe is not None:
            files.append((manifest.probe.filename, manifest.probe.sha256))
        for filename, sha256 in files:
            path = src / filename
            target = self.artifact_path(sha256)
            if path.exists() and not target.exists():
                tmp = target.with_suffix(".part")
                shutil.copyfile(path, tmp)
                tmp.replace(target)
        mpath = self.manifest_path(manifest.bundle_id)
        mpath.parent.mkdir(parents=True, exist_ok=True)
        mpath.write_bytes((src / MANIFEST_FILE).read_bytes())
        session.add(
            Bundle(
                id=manifest.bundle_id,
                model_name=manifest.model_name,
                version=manifest.version,
                manifest=json.loads(manifest.model_dump_json()),
                key_id=manifest.key_id,
                created_at=manifest.created_at,
                uploaded_at=time.time(),
            )
        )
        return manifest, True

    def add_archive(
        self, session: Session, archive: bytes, max_bytes: int = MAX_UNPACKED_BYTES
    ) -> tuple[Manifest, bool]:
        with tempfile.TemporaryDirectory(prefix="lepton-upload-") as tmp:
            return self.add(session, unpack(archive, Path(tmp), max_bytes))
