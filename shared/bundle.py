"""The one bundle verifier, used by the agent's store, the controller's upload, the factory's
`load_bundle` and `lepton-agent infer`, so every side accepts and refuses the same bundles.

A bundle is a folder: `manifest.json` (signed) and one `{sha256}.{format}` file per variant.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from lepton_edge.shared.errors import BundleInvalid, SignatureError
from lepton_edge.shared.manifest import MANIFEST_FILE, Manifest, sha256_file
from lepton_edge.shared.signing import verify_manifest


def read_manifest(bundle_dir: Path) -> Manifest:
    """The folder's manifest, unverified; `BundleInvalid` naming the first bad field."""
    path = Path(bundle_dir) / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleInvalid(
            f"{bundle_dir} is not a bundle: {MANIFEST_FILE}: {exc.strerror}"
        ) from None
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise BundleInvalid(f"{path} is not a valid manifest: {field}: {err['msg']}") from None


def verify_bundle(
    bundle_dir: Path,
    public_key: Ed25519PublicKey | None,
    *,
    required: Collection[str] | None = None,
    rehash: bool = True,
) -> Manifest:
    """Read and check a bundle folder; return its manifest.

    - the manifest parses, and with `public_key` its signature verifies (`SignatureError`);
    - the files of the `required` variants are present (default: every accepted variant; an
      agent holds only its ladder's, and rejected variants may ship without a file);
    - every variant file present has the size and (with `rehash`) the sha256 the manifest pins.
    `rehash=False` is for a folder already checked, e.g. the agent's active bundle at start."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    if public_key is not None:
        verify_manifest(manifest, public_key)
    known = {v.id for v in manifest.variants}
    needed = set(required) if required is not None else {v.id for v in manifest.accepted()}
    if unknown := sorted(needed - known):
        raise BundleInvalid(f"bundle {manifest.bundle_id} has no variant {', '.join(unknown)}")
    for variant in manifest.variants:
        path = bundle_dir / variant.filename
        if not path.is_file():
            if variant.id in needed:
                raise BundleInvalid(
                    f"bundle {manifest.bundle_id}: file {path.name} of variant {variant.id} is "
                    "missing"
                )
            continue
        size = path.stat().st_size
        if size != variant.size_bytes:
            raise SignatureError(
                f"bundle {manifest.bundle_id}: {path.name} of variant {variant.id} has {size} "
                f"bytes, the signed manifest says {variant.size_bytes}"
            )
        if rehash and sha256_file(path) != variant.sha256:
            raise SignatureError(
                f"bundle {manifest.bundle_id}: {path.name} of variant {variant.id} does not match "
                "its sha256"
            )
    probe = manifest.probe
    if probe is not None and (bundle_dir / probe.filename).is_file():
        path = bundle_dir / probe.filename
        size_ok = path.stat().st_size == probe.size_bytes
        if not size_ok or (rehash and sha256_file(path) != probe.sha256):
            raise SignatureError(
                f"bundle {manifest.bundle_id}: probe set {path.name} does not match the signed "
                "manifest"
            )
    return manifest
