"""Bundle upload (signature and sha256 checks) and artifacts over real HTTP with ETag/Range."""

from __future__ import annotations

import hashlib
import json

import httpx
from fastapi.testclient import TestClient

from lepton_edge.controller.bundles import pack
from lepton_edge.shared.signing import generate_key, load_or_create_private_key
from tests.controller.conftest import AUTH, LiveController, live_settings
from tests.controller.helpers import make_bundle

GZ = {**AUTH, "Content-Type": "application/gzip"}


def _key(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.controller.store.key  # type: ignore[attr-defined]


def test_upload_verified_bundle_and_refuse_bad_ones(client: TestClient, tmp_path) -> None:
    good = tmp_path / "good"
    manifest = make_bundle(good, _key(client))
    r = client.post("/api/v1/bundles", content=pack(good), headers=GZ)
    assert r.status_code == 201, r.text
    assert r.json()["bundle_id"] == manifest.bundle_id
    again = client.post("/api/v1/bundles", content=pack(good), headers=GZ)
    assert again.status_code == 200 and again.json()["created"] is False
    listed = client.get("/api/v1/bundles", headers=AUTH).json()
    assert [b["id"] for b in listed] == ["fmnist-1"]
    detail = client.get("/api/v1/bundles/fmnist-1", headers=AUTH).json()
    assert len(detail["manifest"]["variants"]) == 5

    # signed by another key
    other = tmp_path / "other"
    make_bundle(other, generate_key(), bundle_id="fmnist-2")
    r = client.post("/api/v1/bundles", content=pack(other), headers=GZ)
    assert r.status_code == 422 and "not by the pinned controller key" in r.json()["detail"]
    # a file missing
    missing = tmp_path / "missing"
    m = make_bundle(missing, _key(client), bundle_id="fmnist-3")
    (missing / f"{m.variants[0].sha256}.onnx").unlink()
    r = client.post("/api/v1/bundles", content=pack(missing), headers=GZ)
    assert r.status_code == 422 and "missing" in r.json()["detail"]
    # a file altered (same size)
    altered = tmp_path / "altered"
    m = make_bundle(altered, _key(client), bundle_id="fmnist-4")
    f = altered / f"{m.variants[1].sha256}.onnx"
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF
    f.write_bytes(bytes(data))
    r = client.post("/api/v1/bundles", content=pack(altered), headers=GZ)
    assert r.status_code == 422 and "sha256" in r.json()["detail"]
    # manifest edited after signing
    edited = tmp_path / "edited"
    make_bundle(edited, _key(client), bundle_id="fmnist-5")
    doc = json.loads((edited / "manifest.json").read_text())
    doc["tolerance_points"] = 50
    (edited / "manifest.json").write_text(json.dumps(doc))
    r = client.post("/api/v1/bundles", content=pack(edited), headers=GZ)
    assert r.status_code == 422 and "signature" in r.json()["detail"]
    # not an archive, empty, no token
    assert client.post("/api/v1/bundles", content=b"garbage", headers=GZ).status_code == 400
    assert client.post("/api/v1/bundles", content=b"", headers=GZ).status_code == 422
    assert client.post("/api/v1/bundles", content=pack(good)).status_code == 401
    assert [b["id"] for b in client.get("/api/v1/bundles", headers=AUTH).json()] == ["fmnist-1"]


def test_artifacts_etag_and_resumed_download_over_http(tmp_path, db_url) -> None:
    settings = live_settings(tmp_path, db_url)
    key = load_or_create_private_key(settings.key_path())
    bundle = tmp_path / "b"
    manifest = make_bundle(bundle, key, size_scale=500)  # files of 0.5-2 MB
    other = make_bundle(tmp_path / "other", key, bundle_id="other-1", size_scale=2)
    server = LiveController(settings).start()
    try:
        store = server.controller.store
        with httpx.Client(base_url=server.url, timeout=10) as anyone:
            for b in (bundle, tmp_path / "other"):
                r = anyone.post("/api/v1/bundles", content=pack(b), headers=GZ)
                assert r.status_code == 201, r.text
            # Models only for the devices they were sent to: no credential, a forged or another
            # bundle's grant, another bundle's file -> refused with the reason.
            variant = manifest.variants[0]
            url = f"/artifacts/{variant.sha256}"
            for path in ("/bundles/fmnist-1/manifest.json", url):
                r = anyone.get(path)
                assert r.status_code == 401 and "Bearer <grant>" in r.json()["detail"]
            forged = store.grant("d1", "fmnist-1")[:-4] + "AAAA"
            bearer = {"Authorization": f"Bearer {forged}"}
            assert anyone.get(url, headers=bearer).status_code == 401
            bearer = {"Authorization": f"Bearer {store.grant('d1', 'other-1')}"}
            r = anyone.get("/bundles/fmnist-1/manifest.json", headers=bearer)
            assert r.status_code == 403 and "for bundle other-1, not fmnist-1" in r.text
            r = anyone.get(url, headers=bearer)
            assert r.status_code == 403 and "not part of bundle other-1" in r.text
            assert anyone.get(f"/artifacts/{other.variants[0].sha256}", headers=bearer).is_success
            assert anyone.get(url, headers=AUTH).is_success  # an API token may download too
        grant = {"Authorization": f"Bearer {store.grant('d1', 'fmnist-1')}"}
        with httpx.Client(base_url=server.url, timeout=10, headers=grant) as http:
            got = http.get("/bundles/fmnist-1/manifest.json")
            assert (
                got.status_code == 200
                and json.loads(got.content)["signature"] == manifest.signature
            )
            # an interrupted download: read part of the stream, then resume with Range
            part = b""
            with http.stream("GET", url) as resp:
                assert resp.headers["etag"] == f'"{variant.sha256}"'
                assert resp.headers["accept-ranges"] == "bytes"
                for chunk in resp.iter_bytes(65536):
                    part += chunk
                    if len(part) >= variant.size_bytes // 3:
                        break
            rest = http.get(
                url, headers={"Range": f"bytes={len(part)}-", "If-Range": f'"{variant.sha256}"'}
            )
            assert rest.status_code == 206
            assert (
                rest.headers["content-range"]
                == f"bytes {len(part)}-{variant.size_bytes - 1}/{variant.size_bytes}"
            )
            assert hashlib.sha256(part + rest.content).hexdigest() == variant.sha256
            assert (
                http.get(url, headers={"If-None-Match": f'"{variant.sha256}"'}).status_code == 304
            )
            assert http.get(url, headers={"Range": "bytes=999999999-"}).status_code == 416
            assert http.get("/artifacts/not-a-sha").status_code == 403  # not in its bundle
            assert http.get("/bundles/nope/manifest.json").status_code == 403
    finally:
        server.stop()
