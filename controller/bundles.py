"""Bundle storage: verify an uploaded bundle, keep its files content-addressed, index it.

A bundle is refused unless `shared.bundle.verify_bundle` accepts it with THIS controller's key
(the same check the agents and the factory make).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
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
        self._files: dict[str, set[str]] = {}  # bundle id -> its files' sha256 (immutable)

    def artifact_path(self, sha256: str) -> Path:
        return self.artifact_dir / sha256

    # --- download grants ---------------------------------------------------------------------
    # A device fetches a bundle's manifest and files with the grant its deploy or benchmark
    # command carries: an HMAC (keyed from the signing key, so every replica that signs can
    # check it) over its device id and the bundle id. Commands reach a device on its own
    # topic, so a device can fetch only bundles sent to it.

    def grant(self, device_id: str, bundle_id: str) -> str:
        mac = hmac.new(self._grant_key(), f"{device_id}\n{bundle_id}".encode(), "sha256")
        return ".".join(
            ["lgd", _b64(device_id.encode()), _b64(bundle_id.encode()), _b64(mac.digest())]
        )

    def granted(self, token: str) -> tuple[str, str] | None:
        """(device id, bundle id) of a valid grant; None if `token` is not one of ours."""
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != "lgd":
            return None
        try:
            device_id, bundle_id = (_unb64(p).decode() for p in parts[1:3])
        except ValueError:
            return None
        if not hmac.compare_digest(self.grant(device_id, bundle_id), token):
            return None
        return device_id, bundle_id

    def files_of(self, bundle_id: str) -> set[str]:
        """The sha256 of every file the bundle's manifest lists (variants and probe set)."""
        cached = self._files.get(bundle_id)
        if cached is None:
            try:
                manifest = Manifest.model_validate_json(self.manifest_path(bundle_id).read_bytes())
            except (OSError, ValueError):
                return set()
            cached = {v.sha256 for v in manifest.variants}
            if manifest.probe is not None:
                cached.add(manifest.probe.sha256)
            self._files[bundle_id] = cached
        return cached

    def _grant_key(self) -> bytes:
        raw = self.key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return hashlib.sha256(b"lepton-edge download grant\0" + raw).digest()

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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(str(exc)) from None
