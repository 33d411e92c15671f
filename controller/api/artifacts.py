"""Agent-facing downloads: signed manifests and content-addressed variant files.

No admin token: manifests are signed and files are named by their sha256. ETag = sha256 and
HTTP Range (206) let agents resume an interrupted download.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse

from lepton_edge.controller.api.deps import ControllerDep

router = APIRouter(tags=["artifacts"])

SHA256 = re.compile(r"^[0-9a-f]{64}$")
BUNDLE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@router.get("/bundles/{bundle_id}/manifest.json", response_class=FileResponse)
def manifest(bundle_id: str, controller: ControllerDep) -> FileResponse:
    path = controller.store.manifest_path(bundle_id) if BUNDLE_ID.fullmatch(bundle_id) else None
    if path is None or not path.exists():
        raise HTTPException(404, f"bundle {bundle_id} not found")
    return FileResponse(path, media_type="application/json")


@router.get(
    "/artifacts/{sha256}",
    response_class=FileResponse,
    responses={206: {"description": "the requested byte range"}, 304: {"description": "unchanged"}},
)
def artifact(sha256: str, request: Request, controller: ControllerDep) -> Response:
    if not SHA256.fullmatch(sha256):
        raise HTTPException(404, "artifacts are named by a lowercase hex sha256")
    path = controller.store.artifact_path(sha256)
    if not path.exists():
        raise HTTPException(404, f"artifact {sha256} not found")
    etag = f'"{sha256}"'
    if request.headers.get("if-none-match") in (etag, sha256, "*"):
        return Response(status_code=304, headers={"ETag": etag})
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"},
    )
