"""The artifact store against a real HTTP server: verify, activate, roll back, resume, refuse."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.agent.config import StoreSettings
from lepton_edge.agent.store import ArtifactStore, StoreError, sha256_file
from lepton_edge.shared.signing import generate_key
from tests.agent.agent_support import ArtifactServer, ladder_for, make_bundle

KEY = generate_key()


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as srv:
        yield srv


def store_at(tmp_path: Path, **settings: object) -> ArtifactStore:
    opts = {"http_timeout_s": 2.0, "download_attempts": 3, "min_free_mb": 0, **settings}
    return ArtifactStore(tmp_path / "state", KEY.public_key(), StoreSettings(**opts))


def publish(server: ArtifactServer, tmp_path: Path, bundle_id: str, size: int = 50_000) -> object:
    payloads = {
        "onnx-fp32": os.urandom(size),
        "onnx-int8-static": os.urandom(size // 2),
    }
    manifest = make_bundle(tmp_path / "served" / bundle_id, KEY, bundle_id, payloads)
    server.add_bundle(tmp_path / "served" / bundle_id)
    return manifest


def fetch(store: ArtifactStore, server: ArtifactServer, manifest: object) -> object:
    ladder = ladder_for(manifest)  # type: ignore[arg-type]
    return store.fetch(
        manifest.bundle_id,  # type: ignore[attr-defined]
        server.manifest_url(manifest.bundle_id),  # type: ignore[attr-defined]
        server.artifact_base,
        list(ladder.values()),
        ladder,
    )


def test_fetch_activate_rollback_gc(tmp_path: Path, server: ArtifactServer) -> None:
    store = store_at(tmp_path)
    assert store.recover() is None
    bundles = [publish(server, tmp_path, f"b{i}") for i in range(3)]

    b0 = fetch(store, server, bundles[0])
    assert store.current() is None  # fetched is not active
    store.activate(b0)  # type: ignore[arg-type]
    cur = store.current()
    assert cur is not None and cur.bundle_id == "b0"
    for v in cur.manifest.variants:
        assert sha256_file(cur.variant_path(v.id)) == v.sha256

    store.activate(fetch(store, server, bundles[1]))  # type: ignore[arg-type]
    store.activate(fetch(store, server, bundles[2]))  # type: ignore[arg-type]
    assert store.current().bundle_id == "b2"  # type: ignore[union-attr]
    assert store.previous().bundle_id == "b1"  # type: ignore[union-attr]
    assert len(list(store.bundles.iterdir())) == 2  # b0 collected

    back = store.rollback()
    assert back.bundle_id == "b1" and store.current().bundle_id == "b1"  # type: ignore[union-attr]
    assert store.previous().bundle_id == "b2"  # type: ignore[union-attr]
    # a fresh store (agent restart) comes up on the same bundle
    assert store_at(tmp_path).recover().bundle_id == "b1"  # type: ignore[union-attr]


def test_rollback_without_previous(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no previous bundle"):
        store_at(tmp_path).rollback()


def test_tampered_artifact_rejected_and_current_kept(
    tmp_path: Path, server: ArtifactServer
) -> None:
    store = store_at(tmp_path)
    good = publish(server, tmp_path, "good")
    store.activate(fetch(store, server, good))  # type: ignore[arg-type]
    evil = publish(server, tmp_path, "evil")
    sha = evil.variants[0].sha256  # type: ignore[attr-defined]
    original = server.files[sha].read_bytes()
    server.faults.replace[sha] = original[:-1] + bytes([original[-1] ^ 1])  # same size, one bit
    with pytest.raises(StoreError, match=r"sha256 .* artifact rejected"):
        fetch(store, server, evil)
    assert store.current().bundle_id == "good"  # type: ignore[union-attr]
    assert not list(store.staging.iterdir())
    assert not (store.downloads / f"{sha}.part").exists()  # the bad bytes are gone
    assert [d.name.split("-")[0] for d in store.bundles.iterdir()] == ["good"]


def test_bad_signature_and_foreign_key_rejected(tmp_path: Path, server: ArtifactServer) -> None:
    store = store_at(tmp_path)
    manifest = publish(server, tmp_path, "b")
    path = server.bundles["b"] / "manifest.json"
    path.write_text(path.read_text().replace('"version":"1"', '"version":"2"'))
    with pytest.raises(StoreError, match=r"bad signature.*does not match"):
        fetch(store, server, manifest)
    other = generate_key()
    make_bundle(tmp_path / "foreign", other, "f", {"onnx-fp32": b"x" * 100})
    foreign = server.add_bundle(tmp_path / "foreign")
    with pytest.raises(StoreError, match="not by the pinned controller key"):
        fetch(store, server, foreign)
    assert store.current() is None


def test_resume_after_cut_uses_range(tmp_path: Path, server: ArtifactServer) -> None:
    store = store_at(tmp_path)
    manifest = publish(server, tmp_path, "b", size=300_000)
    sha = manifest.variants[0].sha256  # type: ignore[attr-defined]
    server.faults.cut_after[sha] = 120_000
    bundle = fetch(store, server, manifest)
    assert server.ranges(sha)[0] is None
    resumed = server.ranges(sha)[1]
    assert resumed is not None
    start = int(resumed.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 120_000  # asked only for the rest
    assert len(server.ranges(sha)) == 2
    assert sha256_file(bundle.variant_path("onnx-fp32")) == sha  # type: ignore[attr-defined]


def test_404_and_stall_fail_with_reason(tmp_path: Path, server: ArtifactServer) -> None:
    store = store_at(tmp_path, http_timeout_s=0.5, download_attempts=2)
    manifest = publish(server, tmp_path, "b")
    with pytest.raises(StoreError, match="HTTP 404"):
        store.fetch("b", server.url + "/bundles/missing/manifest.json", server.artifact_base, [])
    sha = manifest.variants[0].sha256  # type: ignore[attr-defined]
    del server.files[sha]
    with pytest.raises(StoreError, match="HTTP 404"):
        fetch(store, server, manifest)
    server.files[sha] = server.bundles["b"] / f"{sha}.onnx"
    server.faults.stall.add(sha)
    with pytest.raises(StoreError, match="stalled"):
        fetch(store, server, manifest)
    # what arrived before each stall is kept; the second try asked only for the rest
    part = (store.downloads / f"{sha}.part").read_bytes()
    assert len(part) == 2048 and server.files[sha].read_bytes().startswith(part)
    assert server.ranges(sha)[-2:] == [None, "bytes=1024-"]


def test_not_enough_disk_space(tmp_path: Path, server: ArtifactServer) -> None:
    store = store_at(tmp_path, min_free_mb=10**9)  # a reserve no disk has: "full"
    manifest = publish(server, tmp_path, "b")
    with pytest.raises(StoreError, match="not enough disk space"):
        fetch(store, server, manifest)
    assert not [p for p, _, _ in server.log if p.startswith("/artifacts/")]  # checked first


def test_no_pinned_key(tmp_path: Path, server: ArtifactServer) -> None:
    store = ArtifactStore(tmp_path / "s", None, StoreSettings())
    with pytest.raises(StoreError, match="no pinned controller key"):
        store.fetch("b", server.manifest_url("b"), server.artifact_base, [])


def test_recover_skips_corrupted_current(tmp_path: Path, server: ArtifactServer) -> None:
    store = store_at(tmp_path)
    store.activate(fetch(store, server, publish(server, tmp_path, "old")))  # type: ignore[arg-type]
    new = fetch(store, server, publish(server, tmp_path, "new"))
    store.activate(new)  # type: ignore[arg-type]
    victim = new.variant_path("onnx-fp32")  # type: ignore[attr-defined]
    victim.write_bytes(b"bit rot")
    (store.staging / "half-built").mkdir()
    again = store_at(tmp_path)
    bundle = again.recover()
    assert bundle is not None and bundle.bundle_id == "old"
    assert again.current().bundle_id == "old"  # type: ignore[union-attr]
    assert not list(again.staging.iterdir())


def test_redeploy_reuses_verified_files(tmp_path: Path, server: ArtifactServer) -> None:
    store = store_at(tmp_path)
    manifest = publish(server, tmp_path, "b")
    store.activate(fetch(store, server, manifest))  # type: ignore[arg-type]
    before = len(server.log)
    again = fetch(store, server, manifest)
    assert [p for p, _, _ in server.log[before:]] == ["/bundles/b/manifest.json"]
    assert again.variant_ids() == ["onnx-fp32", "onnx-int8-static"]  # type: ignore[attr-defined]
