"""Ed25519 signing of manifests: the controller signs, agents verify with a pinned key."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lepton_edge.shared.errors import SignatureError
from lepton_edge.shared.manifest import Manifest


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key, recorded in the manifest to name the signer."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("private key is not Ed25519")
    return key


def load_public_key(data: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SignatureError(f"public key is not valid PEM: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("public key is not Ed25519")
    return key


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """Read the signing key at `path`, creating it (mode 0600) on first use.

    Several controllers sharing a state volume may start at once: the key file is created with
    a hard link, which fails if it exists, so they all end up with the one key that won.
    """
    if path.exists():
        return load_private_key(path.read_bytes())
    key = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(private_pem(key))
        tmp.chmod(0o600)
        os.link(tmp, path)
    except FileExistsError:
        return load_private_key(path.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return key


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey) -> Manifest:
    """Return a copy of `manifest` carrying the signer's key id and signature."""
    unsigned = manifest.model_copy(update={"key_id": key_id(key.public_key()), "signature": None})
    signature = key.sign(unsigned.canonical_bytes())
    return unsigned.model_copy(update={"signature": base64.b64encode(signature).decode()})


def verify_manifest(manifest: Manifest, public_key: Ed25519PublicKey) -> None:
    """Raise `SignatureError` unless `manifest` was signed, unchanged, by `public_key`."""
    if not manifest.signature:
        raise SignatureError(f"manifest of bundle {manifest.bundle_id} is not signed")
    expected = key_id(public_key)
    if manifest.key_id != expected:
        raise SignatureError(
            f"manifest of bundle {manifest.bundle_id} was signed by key {manifest.key_id}, "
            f"not by the pinned controller key {expected}"
        )
    try:
        signature = base64.b64decode(manifest.signature, validate=True)
        public_key.verify(signature, manifest.canonical_bytes())
    except (InvalidSignature, ValueError):
        raise SignatureError(
            f"manifest of bundle {manifest.bundle_id}: signature does not match its content"
        ) from None
