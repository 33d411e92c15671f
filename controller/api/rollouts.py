"""Rollouts: create, list, status, pause, resume, abort."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel
from sqlalchemy import select

from lepton_edge.controller.api.deps import AdminAuth, ControllerDep, ReadAuth, SessionDep
from lepton_edge.controller.rollout import RolloutCreate, RolloutError, summary
from lepton_edge.controller.tables import Rollout

router = APIRouter(tags=["rollouts"])


class WaveOut(BaseModel):
    index: int
    cumulative_devices: int
    devices: int
    states: dict[str, int]


class RolloutDeviceOut(BaseModel):
    device_id: str
    wave: int
    state: str
    detail: str
    command_id: str | None
    previous_bundle: str | None
    ladder: dict[str, str] | None
    sent_at: float | None
    healthy_at: float | None


class RolloutOut(BaseModel):
    id: str
    bundle_id: str
    state: str
    reason: str
    target: dict[str, Any]
    options: dict[str, Any]
    current_wave: int
    waves: list[WaveOut]
    created_at: float
    updated_at: float
    finished_at: float | None
    devices: list[RolloutDeviceOut]


def _fail(exc: RolloutError) -> HTTPException:
    return HTTPException(exc.status, str(exc))


@router.post("/rollouts", response_model=RolloutOut, status_code=201)
def create_rollout(
    body: RolloutCreate, session: SessionDep, controller: ControllerDep, _auth: AdminAuth
) -> dict[str, Any]:
    try:
        with controller.engine.lock:
            rollout = controller.engine.create(session, body)
            session.commit()
    except RolloutError as exc:
        raise _fail(exc) from None
    return summary(session, rollout)


@router.get("/rollouts", response_model=list[RolloutOut])
def list_rollouts(
    session: SessionDep, _auth: ReadAuth, state: str | None = None
) -> list[dict[str, Any]]:
    query = select(Rollout).order_by(Rollout.created_at.desc()).limit(100)
    if state:
        query = query.where(Rollout.state == state)
    return [summary(session, r) for r in session.scalars(query)]


@router.get("/rollouts/{rollout_id}", response_model=RolloutOut)
def get_rollout(rollout_id: str, session: SessionDep, _auth: ReadAuth) -> dict[str, Any]:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise HTTPException(404, f"rollout {rollout_id} not found")
    return summary(session, rollout)


def _action(name: str):  # type: ignore[no-untyped-def]
    def action(
        rollout_id: str, session: SessionDep, controller: ControllerDep, _auth: AdminAuth
    ) -> dict[str, Any]:
        try:
            rollout = getattr(controller.engine, name)(session, rollout_id)
            session.commit()
        except RolloutError as exc:
            raise _fail(exc) from None
        return summary(session, rollout)

    action.__name__ = f"{name}_rollout"
    return action


for _name in ("pause", "resume", "abort"):
    router.post(f"/rollouts/{{rollout_id}}/{_name}", response_model=RolloutOut)(_action(_name))
