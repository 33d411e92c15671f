"""Bundles (upload a signed bundle, or build one from fp32 models) and on-device benchmarks."""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from controller.api.deps import AdminAuth, ControllerDep, ReadAuth, SessionDep

if TYPE_CHECKING:
    from controller.app import Controller
from controller.bundles import BundleError
from controller.models import Bundle
from shared.manifest import Manifest

router = APIRouter(tags=["bundles"])

ARCHIVE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


class BundleOut(BaseModel):
    id: str
    model_name: str
    version: str
    created_at: float
    uploaded_at: float
    variants: list[str]
    manifest: Manifest | None = None


class BundleUploaded(BaseModel):
    bundle_id: str
    created: bool
    variants: list[str]


def bundle_out(row: Bundle, full: bool) -> BundleOut:
    manifest = Manifest.model_validate(row.manifest)
    return BundleOut(
        id=row.id,
        model_name=row.model_name,
        version=row.version,
        created_at=row.created_at,
        uploaded_at=row.uploaded_at,
        variants=[v.id for v in manifest.variants],
        manifest=manifest if full else None,
    )


async def _body(request: Request, limit_mb: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_mb * 1024 * 1024:
            raise HTTPException(413, f"upload larger than {limit_mb} MB (max_bundle_upload_mb)")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise HTTPException(422, "body: send the bundle as a tar or tar.gz archive")
    return body


@router.get("/bundles", response_model=list[BundleOut])
def list_bundles(
    session: SessionDep, _auth: ReadAuth, model_name: str | None = None
) -> list[BundleOut]:
    query = select(Bundle).order_by(Bundle.uploaded_at.desc())
    if model_name:
        query = query.where(Bundle.model_name == model_name)
    return [bundle_out(b, full=False) for b in session.scalars(query)]


@router.get("/bundles/{bundle_id}", response_model=BundleOut)
def get_bundle(bundle_id: str, session: SessionDep, _auth: ReadAuth) -> BundleOut:
    row = session.get(Bundle, bundle_id)
    if row is None:
        raise HTTPException(404, f"bundle {bundle_id} not found")
    return bundle_out(row, full=True)


@router.post("/bundles", response_model=BundleUploaded, status_code=201, openapi_extra=ARCHIVE_BODY)
async def upload_bundle(
    request: Request, controller: ControllerDep, _auth: AdminAuth, response: Response
) -> BundleUploaded:
    """Upload a bundle built by `lepton build`: a tar(.gz) of its folder (manifest + files).

    Refused unless signed by this controller's key and every file matches its sha256."""
    body = await _body(request, controller.settings.max_bundle_upload_mb)
    try:
        with controller.db.session() as session:
            manifest, created = controller.store.add_archive(session, body)
    except BundleError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    if not created:
        response.status_code = 200
    return BundleUploaded(
        bundle_id=manifest.bundle_id, created=created, variants=[v.id for v in manifest.variants]
    )


@router.post(
    "/bundles/build", response_model=BundleUploaded, status_code=201, openapi_extra=ARCHIVE_BODY
)
async def build_bundle(
    request: Request,
    controller: ControllerDep,
    _auth: AdminAuth,
    model_name: Annotated[str, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")],
    version: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,32}$")] = None,
    tolerance_points: Annotated[float, Query(ge=0, le=100)] = 1.0,
) -> BundleUploaded:
    """Build a bundle here from fp32 models: a tar(.gz) holding `model.onnx` and/or
    `model.tflite` (Fashion-MNIST input). Runs the variant factory, then stores the bundle."""
    body = await _body(request, controller.settings.max_bundle_upload_mb)
    manifest, created = await run_in_threadpool(
        _build_and_store, controller, body, model_name, version, tolerance_points
    )
    return BundleUploaded(
        bundle_id=manifest.bundle_id, created=created, variants=[v.id for v in manifest.variants]
    )


def _build_and_store(
    controller: Controller,
    body: bytes,
    model_name: str,
    version: str | None,
    tolerance_points: float,
) -> tuple[Manifest, bool]:
    """Runs in a worker thread: building measures every variant and takes a while."""
    try:
        from controller.optimize import build_bundle as factory_build
        from shared.idx import FASHION_MNIST_LABELS, fashion_mnist
    except ImportError as exc:
        raise HTTPException(
            501, f"the variant factory is not installed with this controller ({exc.name})"
        ) from None
    with tempfile.TemporaryDirectory(prefix="lepton-build-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        try:
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                tar.extractall(src, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise HTTPException(400, f"body is not a tar archive: {exc}") from None
        onnx = next(src.rglob("model.onnx"), None)
        tflite = next(src.rglob("model.tflite"), None)
        if onnx is None and tflite is None:
            raise HTTPException(422, "body: the archive needs model.onnx and/or model.tflite")
        # The reference task: calibrate on training images, measure on test images.
        x_train, _ = fashion_mnist("train")
        x_test, y_test = fashion_mnist("t10k")
        out = Path(tmp) / "bundle"
        try:
            factory_build(
                out,
                onnx=onnx,
                tflite=tflite,
                calib_x=x_train[:500],
                eval_x=x_test[:2000],
                eval_y=y_test[:2000],
                labels=FASHION_MNIST_LABELS,
                key=controller.store.key,
                model_name=model_name,
                version=version or time.strftime("%Y%m%d%H%M%S"),
                tolerance_points=tolerance_points,
            )
        except Exception as exc:  # a bad model file is the uploader's problem, not a 500
            raise HTTPException(
                422, f"the variant factory refused the models: {type(exc).__name__}: {exc}"
            ) from None
        try:
            with controller.db.session() as session:
                return controller.store.add(session, out)
        except BundleError as exc:
            raise HTTPException(exc.status, str(exc)) from None
