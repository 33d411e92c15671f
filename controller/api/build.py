"""`POST /bundles/build`: run the variant factory here on uploaded fp32 models.

The one place the fleet service reaches into `controller.factory` (import-linter allows exactly
this edge); `create_app` mounts this router only when the factory's toolchain is installed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from lepton_edge.controller.api.bundles import (
    ARCHIVE_BODY,
    BundleUploaded,
    read_body,
    unpacked_limit,
)
from lepton_edge.controller.api.deps import AdminAuth, ControllerDep
from lepton_edge.controller.archive import ArchiveError, extract_tar
from lepton_edge.controller.bundles import BundleError
from lepton_edge.controller.core import Controller
from lepton_edge.controller.factory import missing_modules
from lepton_edge.shared.idx import FASHION_MNIST_LABELS, fashion_mnist
from lepton_edge.shared.manifest import Manifest

router = APIRouter(tags=["bundles"])


def missing_module() -> str | None:
    """The first module of the factory's toolchain that is not installed, or None."""
    return next(iter(missing_modules()), None)


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
    body = await read_body(request, controller.settings.max_bundle_upload_mb)
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
    from lepton_edge.controller.factory import build_bundle as factory_build

    with tempfile.TemporaryDirectory(prefix="lepton-build-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        try:
            extract_tar(body, src, max_bytes=unpacked_limit(controller))
        except ArchiveError as exc:
            raise HTTPException(400, f"refused: {exc}") from None
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
                input_scale=1 / 255,  # the reference task's uint8 pixels; the models want [0, 1]
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
