"""Agent-facing downloads: signed manifests and content-addressed variant files.

Only for whom a bundle was sent: a device presents the download grant its deploy or benchmark
command carried (`Authorization: Bearer lgd.…`), good for that bundle's manifest and files
only; an API token (read or admin) may download too. ETag = sha256 and HTTP Range (206) let
agents resume an interrupted download.

Behind nginx, `artifact_offload_uri` hands the body to it: the controller checks the grant and
answers `X-Accel-Redirect`, and nginx sends the file from its internal location with
sendfile (zero-copy, Range included) instead of the Python process reading it in chunks.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lepton_edge.controller.api.deps import ControllerDep
from lepton_edge.controller.core import Controller
from lepton_edge.controller.security import Scope, find_token

router = APIRouter(tags=["artifacts"])

SHA256 = re.compile(r"^[0-9a-f]{64}$")
BUNDLE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def _authorize(
    controller: Controller,
    credentials: HTTPAuthorizationCredentials | None,
    bundle_id: str | None = None,
    sha256: str | None = None,
) -> None:
    """401 without a grant or token, 403 for a grant of another bundle."""
    if not controller.settings.auth_required:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401,
            "downloads need 'Authorization: Bearer <grant>' (a device's deploy or benchmark "
            "command carries it) or an API token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    grant = controller.store.granted(credentials.credentials)
    if grant is None:
        with controller.db.session() as session:
            row = find_token(session, credentials.credentials)
        if row is None or row.scope not in (Scope.READ.value, Scope.ADMIN.value):
            raise HTTPException(
                401, "unknown download grant or token", headers={"WWW-Authenticate": "Bearer"}
            )
        return
    device_id, granted = grant
    if bundle_id is not None and bundle_id != granted:
        raise HTTPException(403, f"{device_id}'s grant is for bundle {granted}, not {bundle_id}")
    if sha256 is not None and sha256 not in controller.store.files_of(granted):
        raise HTTPException(
            403, f"artifact {sha256[:16]}… is not part of bundle {granted} ({device_id}'s grant)"
        )


@router.get("/bundles/{bundle_id}/manifest.json", response_class=FileResponse)
def manifest(bundle_id: str, controller: ControllerDep, credentials: Credentials) -> FileResponse:
    _authorize(controller, credentials, bundle_id=bundle_id)
    path = controller.store.manifest_path(bundle_id) if BUNDLE_ID.fullmatch(bundle_id) else None
    if path is None or not path.exists():
        raise HTTPException(404, f"bundle {bundle_id} not found")
    return FileResponse(path, media_type="application/json")


@router.get(
    "/artifacts/{sha256}",
    response_class=FileResponse,
    responses={206: {"description": "the requested byte range"}, 304: {"description": "unchanged"}},
)
def artifact(
    sha256: str, request: Request, controller: ControllerDep, credentials: Credentials
) -> Response:
    _authorize(controller, credentials, sha256=sha256)
    if not SHA256.fullmatch(sha256):
        raise HTTPException(404, "artifacts are named by a lowercase hex sha256")
    path = controller.store.artifact_path(sha256)
    if not path.exists():
        raise HTTPException(404, f"artifact {sha256} not found")
    etag = f'"{sha256}"'
    if request.headers.get("if-none-match") in (etag, sha256, "*"):
        return Response(status_code=304, headers={"ETag": etag})
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    offload = controller.settings.artifact_offload_uri
    if offload is not None:  # nginx sends the body (and answers Range) from its location
        headers["X-Accel-Redirect"] = f"{offload}{sha256}"
        return Response(media_type="application/octet-stream", headers=headers)
    return FileResponse(path, media_type="application/octet-stream", headers=headers)
