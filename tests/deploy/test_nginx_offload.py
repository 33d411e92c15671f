"""deploy/nginx/lepton-controller.conf in front of a live controller with
`artifact_offload_uri`: the controller checks the grant, nginx sends the file (and answers
Range); nothing reaches the files without a grant."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from lepton_edge.controller.bundles import pack
from lepton_edge.shared.signing import load_or_create_private_key
from tests.controller.conftest import AUTH, LiveController, live_settings
from tests.controller.helpers import make_bundle
from tests.nginx import Nginx

GZ = {"Content-Type": "application/gzip", **AUTH}
OFFLOAD = "/_lepton_artifacts/"


def test_nginx_sends_artifacts_after_the_controller_checks_the_grant(tmp_path: Path) -> None:
    settings = live_settings(
        tmp_path, f"sqlite:///{tmp_path / 'c.db'}", artifact_offload_uri=OFFLOAD
    )
    key = load_or_create_private_key(settings.key_path())
    manifest = make_bundle(tmp_path / "b", key, size_scale=500)  # files of 0.5-2 MB
    make_bundle(tmp_path / "other", key, bundle_id="other-1", size_scale=2)
    server = LiveController(settings).start()
    nginx = Nginx(tmp_path / "nginx", settings.http_port, settings.artifact_dir()).start()
    try:
        store = server.controller.store
        variant = max(manifest.variants, key=lambda v: v.size_bytes)
        url = f"/artifacts/{variant.sha256}"
        grant = {"Authorization": f"Bearer {store.grant('d1', 'fmnist-1')}"}
        with httpx.Client(base_url=nginx.url, timeout=10) as http:
            for bundle in (tmp_path / "b", tmp_path / "other"):  # uploads pass through nginx
                reply = http.post("/api/v1/bundles", content=pack(bundle), headers=GZ)
                assert reply.status_code == 201, reply.text
            # The controller alone: the grant is checked, the body is left to nginx.
            direct = httpx.get(f"{server.url}{url}", headers=grant)
            assert direct.status_code == 200 and direct.content == b""
            assert direct.headers["x-accel-redirect"] == f"{OFFLOAD}{variant.sha256}"

            whole = http.get(url, headers=grant)
            assert whole.status_code == 200
            assert hashlib.sha256(whole.content).hexdigest() == variant.sha256
            assert whole.headers["etag"] == f'"{variant.sha256}"'
            assert "x-accel-redirect" not in whole.headers
            # an interrupted download resumed with Range, as the agent's store does
            half = variant.size_bytes // 2
            rest = http.get(url, headers={**grant, "Range": f"bytes={half}-"})
            assert rest.status_code == 206
            assert rest.headers["content-range"] == (
                f"bytes {half}-{variant.size_bytes - 1}/{variant.size_bytes}"
            )
            assert rest.content == whole.content[half:]

            # No grant, another bundle's grant, or the internal location itself: no file.
            assert http.get(url).status_code == 401
            other = {"Authorization": f"Bearer {store.grant('d1', 'other-1')}"}
            refused = http.get(url, headers=other)
            assert refused.status_code == 403 and "not part of bundle other-1" in refused.text
            assert http.get(f"{OFFLOAD}{variant.sha256}").status_code == 404
            assert http.get(f"/artifacts/{'0' * 64}", headers=grant).status_code == 403
    finally:
        nginx.stop()
        server.stop()
