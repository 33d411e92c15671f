"""Rollouts: create, list, status, pause, resume, abort."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from lepton_edge.controller.api.deps import AdminAuth, ControllerDep, ReadAuth, SessionDep
from lepton_edge.controller.rollout import (
    RolloutEngine,
    RolloutError,
    RolloutOptions,
    RolloutTarget,
)
from lepton_edge.controller.tables import Rollout

router = APIRouter(tags=["rollouts"])


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle_id: str = Field(min_length=1, max_length=128)
    target: RolloutTarget
    waves: list[float] | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="cumulative percentages, e.g. [1, 10, 50, 100]; the last is raised to 100",
    )
    options: RolloutOptions = Field(default_factory=RolloutOptions)

    @model_validator(mode="after")
    def _waves_increase(self) -> RolloutCreate:
        if self.waves is not None:
            if any(not (0 < p <= 100) for p in self.waves):
                raise ValueError("waves: each percentage must be in (0, 100]")
            if any(b <= a for a, b in zip(self.waves, self.waves[1:], strict=False)):
                raise ValueError("waves: percentages must increase")
        return self


class WaveOut(BaseModel):
    index: int
    cumulative_devices: int
    devices: int
    states: dict[str, int]


class RolloutDeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read straight off a RolloutDevice row

    device_id: str
    wave: int
    state: str
    detail: str
    command_id: str | None
    rollback_command_id: str | None
    previous_bundle: str | None
    ladder: dict[str, str] | None
    sent_at: float | None
    healthy_at: float | None


class RolloutOut(BaseModel):
    id: str
    bundle_id: str
    state: str
    reason: str
    target: RolloutTarget
    options: RolloutOptions = Field(description="the rollout's settings, defaults filled in")
    current_wave: int
    waves: list[WaveOut]
    created_at: float
    updated_at: float
    finished_at: float | None
    devices: list[RolloutDeviceOut]


def rollout_out(session: Session, rollout: Rollout) -> RolloutOut:
    """The rollout as the API shows it: waves with per-state counts and every device."""
    rds = RolloutEngine.devices(session, rollout.id)
    waves = []
    for i, cumulative in enumerate(rollout.waves):
        states = Counter(r.state for r in rds if r.wave == i)
        waves.append(
            WaveOut(
                index=i,
                cumulative_devices=cumulative,
                devices=states.total(),
                states=dict(states),
            )
        )
    return RolloutOut(
        id=rollout.id,
        bundle_id=rollout.bundle_id,
        state=rollout.state,
        reason=rollout.reason,
        target=RolloutTarget.model_validate(rollout.target),
        options=RolloutOptions.model_validate(rollout.options),
        current_wave=rollout.current_wave,
        waves=waves,
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        finished_at=rollout.finished_at,
        devices=[RolloutDeviceOut.model_validate(r) for r in rds],
    )


def _fail(exc: RolloutError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


@router.post("/rollouts", response_model=RolloutOut, status_code=201)
def create_rollout(
    body: RolloutCreate, session: SessionDep, controller: ControllerDep, _auth: AdminAuth
) -> RolloutOut:
    try:
        with controller.engine.lock:
            rollout = controller.engine.create(
                session, body.bundle_id, body.target, body.waves, body.options
            )
            session.commit()
    except RolloutError as exc:
        raise _fail(exc) from None
    return rollout_out(session, rollout)


@router.get("/rollouts", response_model=list[RolloutOut])
def list_rollouts(
    session: SessionDep, _auth: ReadAuth, state: str | None = None
) -> list[RolloutOut]:
    query = select(Rollout).order_by(Rollout.created_at.desc()).limit(100)
    if state:
        query = query.where(Rollout.state == state)
    return [rollout_out(session, r) for r in session.scalars(query)]


@router.get("/rollouts/{rollout_id}", response_model=RolloutOut)
def get_rollout(rollout_id: str, session: SessionDep, _auth: ReadAuth) -> RolloutOut:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise HTTPException(404, f"rollout {rollout_id} not found")
    return rollout_out(session, rollout)


@router.post("/rollouts/{rollout_id}/pause", response_model=RolloutOut)
def pause_rollout(
    rollout_id: str, session: SessionDep, controller: ControllerDep, _auth: AdminAuth
) -> RolloutOut:
    try:
        rollout = controller.engine.pause(session, rollout_id)
    except RolloutError as exc:
        raise _fail(exc) from None
    return rollout_out(session, rollout)


@router.post("/rollouts/{rollout_id}/resume", response_model=RolloutOut)
def resume_rollout(
    rollout_id: str, session: SessionDep, controller: ControllerDep, _auth: AdminAuth
) -> RolloutOut:
    try:
        rollout = controller.engine.resume(session, rollout_id)
    except RolloutError as exc:
        raise _fail(exc) from None
    return rollout_out(session, rollout)


@router.post("/rollouts/{rollout_id}/abort", response_model=RolloutOut)
def abort_rollout(
    rollout_id: str, session: SessionDep, controller: ControllerDep, _auth: AdminAuth
) -> RolloutOut:
    try:
        rollout = controller.engine.abort(session, rollout_id)
    except RolloutError as exc:
        raise _fail(exc) from None
    return rollout_out(session, rollout)
