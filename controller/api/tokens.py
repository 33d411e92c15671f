"""API tokens (admin) and device enrollment with a one-time token (public)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from lepton_edge.controller.api.deps import AdminAuth, ControllerDep, SessionDep
from lepton_edge.controller.security import EnrollError, Scope, create_token, enroll
from lepton_edge.shared.errors import TopicError
from lepton_edge.shared.messages import EnrollRequest, EnrollResponse
from lepton_edge.shared.signing import public_pem
from lepton_edge.shared.topics import DEVICE_ID_PATTERN

router = APIRouter(tags=["security"])


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Literal["read", "admin", "enroll"]
    name: str = Field(default="", max_length=128)
    device_id: str | None = Field(
        default=None, pattern=DEVICE_ID_PATTERN.pattern, description="enroll: bind to one device"
    )


class TokenCreated(BaseModel):
    id: str
    scope: str
    name: str
    token: str = Field(description="shown once; only its hash is stored")


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def post_token(body: TokenCreate, session: SessionDep, _auth: AdminAuth) -> TokenCreated:
    row, token = create_token(session, Scope(body.scope), body.name, body.device_id)
    return TokenCreated(id=row.id, scope=row.scope, name=row.name, token=token)


@router.post("/enroll", response_model=EnrollResponse)
def post_enroll(
    body: EnrollRequest, session: SessionDep, controller: ControllerDep
) -> EnrollResponse:
    """A device trades a one-time token for its broker login and the controller's public key."""
    try:
        enrollment = enroll(session, body.token, body.device_id)
    except TopicError as exc:
        raise HTTPException(422, f"device_id: {exc}") from None
    except EnrollError as exc:
        raise HTTPException(403, str(exc)) from None
    m = controller.settings.mqtt
    return EnrollResponse(
        device_id=body.device_id,
        mqtt_host=m.public_host or m.host,
        mqtt_port=m.public_port or m.port,
        mqtt_username=enrollment.username,
        mqtt_password=enrollment.password,
        mqtt_tls=m.tls,
        controller_url=controller.settings.base_url(),
        controller_public_key_pem=public_pem(controller.store.key.public_key()).decode(),
    )
