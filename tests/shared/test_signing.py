from pathlib import Path

import pytest

from lepton_edge.shared.errors import SignatureError
from lepton_edge.shared.manifest import Manifest, ModelFormat, Precision, Requirements, Variant
from lepton_edge.shared.signing import (
    generate_key,
    key_id,
    load_or_create_private_key,
    load_public_key,
    public_pem,
    sign_manifest,
    verify_manifest,
)


def manifest() -> Manifest:
    return Manifest(
        bundle_id="fmnist-1",
        model_name="fmnist",
        version="1",
        created_at=0,
        num_classes=10,
        variants=[
            Variant(
                id="onnx-fp32",
                format=ModelFormat.ONNX,
                precision=Precision.FP32,
                scheme="fp32",
                sha256="0" * 64,
                size_bytes=10,
                requirements=Requirements(runtime="onnxruntime"),
            )
        ],
    )


def test_signed_manifest_verifies_after_json_round_trip() -> None:
    key = generate_key()
    signed = sign_manifest(manifest(), key)
    reloaded = Manifest.model_validate_json(signed.model_dump_json())
    verify_manifest(reloaded, key.public_key())
    assert reloaded.key_id == key_id(key.public_key())


def test_unsigned_manifest_is_rejected() -> None:
    with pytest.raises(SignatureError, match="not signed"):
        verify_manifest(manifest(), generate_key().public_key())


def test_manifest_signed_by_another_key_is_rejected() -> None:
    signed = sign_manifest(manifest(), generate_key())
    with pytest.raises(SignatureError, match="pinned"):
        verify_manifest(signed, generate_key().public_key())


def test_tampered_manifest_is_rejected() -> None:
    key = generate_key()
    signed = sign_manifest(manifest(), key)
    variant = signed.variants[0].model_copy(update={"sha256": "1" * 64})
    tampered = signed.model_copy(update={"variants": [variant]})
    with pytest.raises(SignatureError, match="does not match"):
        verify_manifest(tampered, key.public_key())


def test_garbage_signature_is_rejected() -> None:
    key = generate_key()
    signed = sign_manifest(manifest(), key).model_copy(update={"signature": "!!not base64"})
    with pytest.raises(SignatureError):
        verify_manifest(signed, key.public_key())


def test_key_file_is_created_private_and_reused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys" / "signing.pem"
    first = load_or_create_private_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    second = load_or_create_private_key(path)
    assert key_id(first.public_key()) == key_id(second.public_key())
    pinned = load_public_key(public_pem(first.public_key()))
    verify_manifest(sign_manifest(manifest(), second), pinned)


def test_controllers_creating_the_key_at_once_share_one(tmp_path: Path) -> None:
    """Controllers on a shared state volume starting together end up with the same key."""
    import threading

    path = tmp_path / "keys" / "signing.pem"
    barrier = threading.Barrier(8)
    ids: list[str] = []

    def create() -> None:
        barrier.wait()  # all of them find no key, then race to create it
        ids.append(key_id(load_or_create_private_key(path).public_key()))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8 and set(ids) == {key_id(load_or_create_private_key(path).public_key())}
    assert [p.name for p in path.parent.iterdir()] == ["signing.pem"]  # no temp files left


def test_bad_public_key_pem_is_a_signature_error() -> None:
    with pytest.raises(SignatureError, match="PEM"):
        load_public_key(b"not a key")


def test_duplicate_variant_ids_are_refused() -> None:
    m = manifest()
    with pytest.raises(ValueError, match="duplicate"):
        Manifest.model_validate({**m.model_dump(), "variants": [m.variants[0], m.variants[0]]})


def test_variant_filename_is_content_addressed_and_not_signed_over() -> None:
    m = manifest()
    assert m.variants[0].filename == "0" * 64 + ".onnx"
    assert b"filename" not in m.canonical_bytes()  # a property, not a field: signatures unchanged


def test_sha256_file_matches_hashlib_across_chunks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    from lepton_edge.shared.manifest import sha256_file

    data = bytes(range(256)) * 9000  # > 2 MiB: several read chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
