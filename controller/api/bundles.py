"""Bundles (upload a signed bundle, list them) and on-device benchmarks. Building one from fp32
models is `api/build.py`, mounted only where the variant factory is installed."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from lepton_edge.controller import commands
from lepton_edge.controller.api.deps import AdminAuth, ControllerDep, ReadAuth, SessionDep
from lepton_edge.controller.bundles import BundleError
from lepton_edge.controller.core import Controller
from lepton_edge.controller.tables import BenchmarkRecord, Bundle, Device
from lepton_edge.shared.manifest import Manifest
from lepton_edge.shared.messages import Benchmark

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


def unpacked_limit(controller: Controller) -> int:
    """An archive may unpack to twice the upload limit (model weights hardly compress)."""
    return 2 * controller.settings.max_bundle_upload_mb * 1024 * 1024


async def read_body(request: Request, limit_mb: int) -> bytes:
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
    body = await read_body(request, controller.settings.max_bundle_upload_mb)
    try:
        with controller.db.session() as session:
            manifest, created = controller.store.add_archive(
                session, body, max_bytes=unpacked_limit(controller)
            )
    except BundleError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    if not created:
        response.status_code = 200
    return BundleUploaded(
        bundle_id=manifest.bundle_id, created=created, variants=[v.id for v in manifest.variants]
    )


# --- on-device benchmarks ---------------------------------------------------------------------


class BenchmarkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle_id: str = Field(min_length=1, max_length=128)
    device_ids: list[str] | None = Field(
        default=None, description="default: one online device per hardware class"
    )
    variant_ids: list[str] | None = Field(default=None, description="default: every accepted one")
    iterations: int = Field(default=50, ge=1, le=10_000)


class BenchmarkSent(BaseModel):
    command_id: str
    device_id: str
    hardware_class: str | None
    published: bool


class BenchmarkOut(BaseModel):
    hardware_class: str
    bundle_id: str
    variant_id: str
    device_id: str
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    error: str | None
    measured_at: float


@router.post("/benchmarks", response_model=list[BenchmarkSent], status_code=202)
def request_benchmarks(
    body: BenchmarkRequest, session: SessionDep, controller: ControllerDep, _auth: AdminAuth
) -> list[BenchmarkSent]:
    """Ask devices to time the bundle's variants on their own hardware; results are kept per
    hardware class and used by selection for every device of that class."""
    bundle = session.get(Bundle, body.bundle_id)
    if bundle is None:
        raise HTTPException(404, f"bundle {body.bundle_id} not found")
    manifest = Manifest.model_validate(bundle.manifest)
    variant_ids = body.variant_ids or [v.id for v in manifest.accepted()]
    unknown = sorted(set(variant_ids) - {v.id for v in manifest.variants})
    if unknown:
        raise HTTPException(
            422, f"variant_ids: bundle {body.bundle_id} has no {', '.join(unknown)}"
        )
    if body.device_ids:
        devices = list(session.scalars(select(Device).where(Device.id.in_(body.device_ids))))
        missing = sorted(set(body.device_ids) - {d.id for d in devices})
        if missing:
            raise HTTPException(404, f"device(s) not found: {', '.join(missing)}")
    else:
        by_class: dict[str, Device] = {}
        for d in session.scalars(
            select(Device)
            .where(Device.online.is_(True), Device.hardware_class.is_not(None))
            .order_by(Device.id)
        ):
            by_class.setdefault(d.hardware_class or "", d)
        devices = list(by_class.values())
        if not devices:
            raise HTTPException(409, "no online device with a known hardware profile")
    base = controller.settings.base_url()
    now = time.time()
    sent = []
    for device in devices:
        command = Benchmark(
            command_id=commands.new_command_id("bench"),
            ts=now,
            bundle_id=manifest.bundle_id,
            manifest_url=f"{base}/bundles/{manifest.bundle_id}/manifest.json",
            artifact_base_url=f"{base}/artifacts",
            variant_ids=variant_ids,
            iterations=body.iterations,
            download_token=controller.store.grant(device.id, manifest.bundle_id),
        )
        commands.record(session, device.id, command, None, now)
        sent.append((device, command))
    session.commit()
    out = []
    for device, command in sent:
        published = controller.publish(device.id, command)
        out.append(
            BenchmarkSent(
                command_id=command.command_id,
                device_id=device.id,
                hardware_class=device.hardware_class,
                published=published,
            )
        )
    return out


@router.get("/benchmarks", response_model=list[BenchmarkOut])
def list_benchmarks(
    session: SessionDep,
    _auth: ReadAuth,
    bundle_id: str | None = None,
    hardware_class: str | None = None,
) -> list[dict[str, Any]]:
    query = select(BenchmarkRecord).order_by(
        BenchmarkRecord.hardware_class, BenchmarkRecord.variant_id
    )
    if bundle_id:
        query = query.where(BenchmarkRecord.bundle_id == bundle_id)
    if hardware_class:
        query = query.where(BenchmarkRecord.hardware_class == hardware_class)
    return [{c: getattr(r, c) for c in BenchmarkOut.model_fields} for r in session.scalars(query)]
