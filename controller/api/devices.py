"""Devices: list with filters, detail with history and events, tags, ladder, fleet events."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from lepton_edge.controller import fleet, pagination
from lepton_edge.controller.api.deps import AdminAuth, ControllerDep, ReadAuth, SessionDep
from lepton_edge.controller.selection import NoEligibleVariant, ladder_for
from lepton_edge.controller.tables import Bundle, Device, EventRecord
from lepton_edge.shared.hardware import HardwareProfile
from lepton_edge.shared.manifest import Ladder, Manifest
from lepton_edge.shared.messages import EventKind, InferenceResult, PowerLevel, Telemetry

router = APIRouter(tags=["devices"])

TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class DeviceOut(BaseModel):
    id: str
    online: bool
    tags: list[str]
    arch: str | None
    hardware_class: str | None
    hardware: HardwareProfile | None
    agent_version: str | None
    active_bundle: str | None
    active_variant: str | None
    power_level: PowerLevel | None
    first_seen: float
    last_seen: float
    last_telemetry: Telemetry | None = Field(description="the newest sample, as the agent sent it")
    last_telemetry_at: float | None
    telemetry_count: int
    gaps: int = Field(description="telemetry samples missing when a later one arrived")
    duplicates: int = Field(description="samples received again (redelivered), stored once")
    resets: int = Field(description="times the device's sequence started again (a new epoch)")
    suspect_seqs: int = Field(description="samples whose seq jumped too far ahead to trust")


class EventOut(BaseModel):
    id: int
    device_id: str
    kind: EventKind
    reason: str
    command_id: str | None
    data: dict[str, Any]
    ts: float


class DeviceDetail(DeviceOut):
    history: list[Telemetry] = Field(description="the newest samples, oldest first")
    events: list[EventOut]


class TagsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[Annotated[str, Field(pattern=TAG_PATTERN)]] = Field(max_length=64)


class StepVariant(BaseModel):
    """What a ladder step runs: which model (architecture) at which precision."""

    architecture: str
    precision: str
    format: str
    parameters: int | None
    macs: int | None


class LadderOut(BaseModel):
    device_id: str
    bundle_id: str
    hardware_class: str
    ladder: Ladder
    variants: dict[str, StepVariant]
    latency_source: dict[str, str]
    latency_ms: dict[str, float | None]
    notes: list[str]


def device_out(device: Device, tags: list[str]) -> DeviceOut:
    fields = {c: getattr(device, c) for c in DeviceOut.model_fields if c != "tags"}
    return DeviceOut.model_validate(fields | {"tags": tags})


def event_out(e: EventRecord) -> EventOut:
    return EventOut(
        id=e.id,
        device_id=e.device_id,
        kind=EventKind(e.kind),
        reason=e.reason,
        command_id=e.command_id,
        data=e.data or {},
        ts=e.ts,
    )


def _device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(404, f"device {device_id} not found")
    return device


#: Columns that are never NULL, so a keyset cursor (value, id) orders every row; "-": descending.
DeviceSort = Literal["id", "-id", "last_seen", "-last_seen", "first_seen", "-first_seen"]


def _only_known(request: Request, known: Iterable[str]) -> None:
    unknown = sorted(set(request.query_params) - set(known))
    if unknown:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"unknown parameter; use one of {', '.join(sorted(known))}",
                    "type": "extra_forbidden",
                }
                for name in unknown
            ]
        )


def _next_page(request: Request, response: Response, cursor: pagination.Cursor) -> None:
    """The next page's cursor in `X-Next-Cursor` and as a `Link: <...>; rel="next"`."""
    token = pagination.encode(cursor)
    response.headers["X-Next-Cursor"] = token
    response.headers["Link"] = f'<{request.url.include_query_params(cursor=token)}>; rel="next"'


def _decode(text: str, query: str) -> pagination.Cursor:
    try:
        return pagination.decode(text, query)
    except pagination.CursorError as exc:
        raise HTTPException(400, str(exc)) from None


def device_filters(
    q: Annotated[str | None, Query(max_length=64, description="part of the device id")] = None,
    tag: str | None = None,
    online: bool | None = None,
    arch: str | None = None,
    hardware_class: str | None = None,
    variant: str | None = None,
    power_level: PowerLevel | None = None,
    bundle: str | None = None,
) -> dict[str, Any]:
    """The device filters both the list and the summary take (None: not filtered)."""
    return {
        "q": q,
        "tag": tag,
        "online": online,
        "arch": arch,
        "hardware_class": hardware_class,
        "variant": variant,
        "power_level": power_level.value if power_level else None,
        "bundle": bundle,
    }


DeviceFilters = Annotated[dict[str, Any], Depends(device_filters)]
#: Any query parameter beside these (and a list's paging) is a 422, not silently ignored.
DEVICE_FILTERS = tuple(inspect.signature(device_filters).parameters)


@router.get("/devices", response_model=list[DeviceOut])
def list_devices(
    request: Request,
    response: Response,
    session: SessionDep,
    _auth: ReadAuth,
    filters: DeviceFilters,
    sort: DeviceSort = "id",
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> list[DeviceOut]:
    """Devices by `sort`, a page of `limit`; when more follow, `X-Next-Cursor` (and `Link`)
    name the next page: pass it back as `cursor` with the same sort and filters."""
    _only_known(request, (*DEVICE_FILTERS, "sort", "cursor", "limit", "offset"))
    query = pagination.query_digest(sort=sort, **filters)
    after = None
    if cursor is not None:
        if offset:
            raise HTTPException(400, "give a cursor or an offset, not both")
        last = _decode(cursor, query)
        after = (last.value, str(last.key))
    devices = fleet.list_devices(
        session, sort=sort, after=after, limit=limit + 1, offset=offset, **filters
    )
    if len(devices) > limit:
        devices = devices[:limit]
        last_row = devices[-1]
        _next_page(
            request,
            response,
            pagination.Cursor(query, getattr(last_row, sort.lstrip("-")), last_row.id),
        )
    tags = fleet.device_tags(session, [d.id for d in devices])
    return [device_out(d, tags[d.id]) for d in devices]


@router.get("/devices/summary")
def device_summary(
    request: Request, session: SessionDep, _auth: ReadAuth, filters: DeviceFilters
) -> dict[str, Any]:
    """Counts of the devices matching the filters: in all, and by status, power level,
    active variant, hardware class, architecture, bundle and tag (what the fleet page draws)."""
    _only_known(request, DEVICE_FILTERS)
    return fleet.summary(session, **filters)


@router.get("/devices/{device_id}", response_model=DeviceDetail)
def get_device(
    device_id: str,
    session: SessionDep,
    _auth: ReadAuth,
    history: Annotated[int, Query(ge=0, le=10000)] = 300,
    events: Annotated[int, Query(ge=0, le=10000)] = 50,
) -> DeviceDetail:
    device = _device(session, device_id)
    tags = fleet.device_tags(session, [device_id])[device_id]
    return DeviceDetail(
        **dict(device_out(device, tags)),
        history=fleet.history(session, device_id, history) if history else [],
        events=[event_out(e) for e in fleet.recent_events(session, device_id, limit=events)]
        if events
        else [],
    )


class ResultsOut(BaseModel):
    """What a device's `result` topic said last: kept in memory only, never in the database."""

    latest: InferenceResult | None = Field(description="the newest result (null before one)")
    snapshot: InferenceResult | None = Field(
        description="the newest result that carried a thumbnail (its frame, its answer)"
    )


@router.get("/devices/{device_id}/results", response_model=ResultsOut)
def get_results(
    device_id: str, session: SessionDep, controller: ControllerDep, _auth: ReadAuth
) -> ResultsOut:
    _device(session, device_id)
    bridge = controller.bridge
    latest, snapshot = bridge.latest_result(device_id) if bridge is not None else (None, None)
    if latest is not None and latest.thumbnail_jpeg is not None:
        latest = latest.model_copy(update={"thumbnail_jpeg": None})  # it is in `snapshot`
    return ResultsOut(latest=latest, snapshot=snapshot)


@router.put("/devices/{device_id}/tags", response_model=DeviceOut)
def put_tags(device_id: str, body: TagsIn, session: SessionDep, _auth: AdminAuth) -> DeviceOut:
    device = _device(session, device_id)
    fleet.set_tags(session, device_id, body.tags)
    session.flush()
    return device_out(device, sorted(set(body.tags)))


@router.delete("/devices/{device_id}", status_code=204)
def delete_device(device_id: str, controller: ControllerDep, _auth: AdminAuth) -> None:
    """Forget a device (409 while a rollout it is in is under way). A box that still runs
    comes back with its next birth unless its enrollment is gone too (registration=enrolled)."""
    try:
        removed = controller.remove_device(device_id)
    except fleet.DeviceInRollout as exc:
        raise HTTPException(409, str(exc)) from None
    if not removed:
        raise HTTPException(404, f"device {device_id} not found")


@router.get("/devices/{device_id}/ladder", response_model=LadderOut)
def get_ladder(
    device_id: str, bundle_id: str, session: SessionDep, controller: ControllerDep, _auth: ReadAuth
) -> LadderOut:
    device = _device(session, device_id)
    bundle = session.get(Bundle, bundle_id)
    if bundle is None:
        raise HTTPException(404, f"bundle {bundle_id} not found")
    profile = fleet.profile(device)
    if profile is None:
        raise HTTPException(409, f"device {device_id} has not announced its hardware yet")
    manifest = Manifest.model_validate(bundle.manifest)
    try:
        selection = ladder_for(session, controller.settings.selection, manifest, profile)
    except NoEligibleVariant as exc:
        raise HTTPException(
            409, {"message": str(exc).split(":")[0], "rejected": exc.rejected}
        ) from None
    return LadderOut(
        device_id=device_id,
        bundle_id=bundle_id,
        hardware_class=selection.hardware_class,
        ladder=selection.ladder,
        variants={
            v.id: StepVariant(
                architecture=v.architecture or "base",
                precision=v.precision.value,
                format=v.format.value,
                parameters=v.parameters,
                macs=v.macs,
            )
            for v in manifest.variants
            if v.id in {step.variant_id for step in selection.ladder.steps}
        },
        latency_source=dict(selection.latency_source),
        latency_ms=selection.latency_ms,
        notes=selection.notes,
    )


@router.get("/events", response_model=list[EventOut])
def list_events(
    request: Request,
    response: Response,
    session: SessionDep,
    _auth: ReadAuth,
    device_id: str | None = None,
    kind: EventKind | None = None,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> list[EventOut]:
    """Newest first; when older ones follow, `X-Next-Cursor` names the next page."""
    _only_known(request, ("device_id", "kind", "cursor", "limit"))
    query = pagination.query_digest(device_id=device_id, kind=kind)
    before = None
    if cursor is not None:
        last = _decode(cursor, query)
        if not isinstance(last.key, int):
            raise HTTPException(400, "the cursor is not one this server gave out")
        before = last.key
    events = fleet.recent_events(session, device_id, kind, limit + 1, before=before)
    if len(events) > limit:
        events = events[:limit]
        _next_page(request, response, pagination.Cursor(query, events[-1].ts, events[-1].id))
    return [event_out(e) for e in events]
