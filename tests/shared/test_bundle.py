"""The one bundle verifier, and that the agent, the controller, the factory and `lepton-agent
infer` give the same verdict on the same folder through it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lepton_edge.agent.cli.infer import load_bundle as infer_load
from lepton_edge.agent.store import LADDER_FILE, ArtifactStore, StoreError
from lepton_edge.controller.bundles import BundleError, BundleStore
from lepton_edge.controller.factory import load_bundle as factory_load
from lepton_edge.shared.bundle import verify_bundle
from lepton_edge.shared.errors import BundleInvalid, SignatureError, UserError
from lepton_edge.shared.messages import PowerLevel
from lepton_edge.shared.signing import generate_key, private_pem, public_pem
from tests.agent.agent_support import make_bundle

PAYLOADS = {"a": b"first model", "b": b"second model"}


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return generate_key()


@pytest.fixture
def bundle(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    folder = tmp_path / "bundle"
    make_bundle(folder, key, "b1", PAYLOADS)
    return folder


def _file(folder: Path, variant_id: str) -> Path:
    manifest = json.loads((folder / "manifest.json").read_text())
    variant = next(v for v in manifest["variants"] if v["id"] == variant_id)
    return folder / f"{variant['sha256']}.{variant['format']}"


def test_a_good_bundle_passes_and_its_manifest_comes_back(
    bundle: Path, key: Ed25519PrivateKey
) -> None:
    manifest = verify_bundle(bundle, key.public_key())
    assert [v.id for v in manifest.variants] == ["a", "b"]


def test_bad_bundles_are_refused_with_the_reason(bundle: Path, key: Ed25519PrivateKey) -> None:
    public = key.public_key()
    with pytest.raises(SignatureError, match="not by the pinned controller key"):
        verify_bundle(bundle, generate_key().public_key())
    flipped = _file(bundle, "a")
    data = bytearray(flipped.read_bytes())
    data[0] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="variant a does not match its sha256"):
        verify_bundle(bundle, public)
    verify_bundle(bundle, public, rehash=False)  # same size: only a rehash sees it
    flipped.write_bytes(b"short")
    with pytest.raises(SignatureError, match="has 5 bytes, the signed manifest says 11"):
        verify_bundle(bundle, public, rehash=False)
    flipped.unlink()
    with pytest.raises(BundleInvalid, match="variant a is missing"):
        verify_bundle(bundle, public)
    assert verify_bundle(bundle, public, required={"b"}).bundle_id == "b1"  # an agent's subset
    with pytest.raises(BundleInvalid, match="has no variant zz"):
        verify_bundle(bundle, public, required={"zz"})
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(BundleInvalid, match="not a valid manifest: bundle_id"):
        verify_bundle(bundle, public)
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleInvalid, match="is not a bundle"):
        verify_bundle(bundle, None)


def _callers(tmp_path: Path, key: Ed25519PrivateKey) -> dict[str, Callable[[Path], object]]:
    """Each side's entry to the verifier, with the same trusted key."""
    key_file = tmp_path / "controller.pem"
    key_file.write_bytes(public_pem(key.public_key()))
    signing = tmp_path / "signing.pem"
    signing.write_bytes(private_pem(key))
    agent = ArtifactStore(tmp_path / "agent", key.public_key())
    controller = BundleStore(tmp_path / "artifacts", tmp_path / "bundles", signing)

    def agent_load(folder: Path) -> object:
        ladder = {PowerLevel.PERFORMANCE.value: "a", PowerLevel.CRITICAL.value: "b"}
        (folder / LADDER_FILE).write_text(json.dumps(ladder))
        return agent.load(folder)

    return {
        "agent store": agent_load,
        "controller upload": controller.verify,
        "factory load_bundle": lambda f: factory_load(f, key.public_key()),
        "lepton-agent infer": lambda f: infer_load(f, key_file),
    }


REFUSED = (StoreError, BundleError, SignatureError, BundleInvalid, UserError)


@pytest.mark.parametrize(
    "damage",
    ["none", "flip a byte", "truncate", "remove a file", "edit the manifest", "other key"],
)
def test_every_side_gives_the_same_verdict(
    tmp_path: Path, key: Ed25519PrivateKey, damage: str
) -> None:
    verdicts = {}
    for name, check in _callers(tmp_path, key).items():
        folder = tmp_path / name.replace(" ", "-")
        shutil.rmtree(folder, ignore_errors=True)
        make_bundle(folder, generate_key() if damage == "other key" else key, "b1", PAYLOADS)
        victim = _file(folder, "a")
        if damage == "flip a byte":
            victim.write_bytes(b"X" + victim.read_bytes()[1:])
        elif damage == "truncate":
            victim.write_bytes(victim.read_bytes()[:-1])
        elif damage == "remove a file":
            victim.unlink()
        elif damage == "edit the manifest":
            doc = json.loads((folder / "manifest.json").read_text())
            doc["model_name"] = "other"
            (folder / "manifest.json").write_text(json.dumps(doc))
        try:
            check(folder)
            verdicts[name] = "accepted"
        except REFUSED:
            verdicts[name] = "refused"
    expected = "accepted" if damage == "none" else "refused"
    assert verdicts == dict.fromkeys(verdicts, expected), verdicts
