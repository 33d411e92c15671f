"""Dependencies shared by the routes: the controller context, a DB session, token checks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from lepton_edge.controller.core import Controller
from lepton_edge.controller.security import Scope, find_token

_bearer = HTTPBearer(auto_error=False, description="an API token: lepton-controller token create")


def get_controller(request: Request) -> Controller:
    controller: Controller = request.app.state.controller
    return controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def get_session(request: Request) -> Iterator[Session]:
    with get_controller(request).db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class Principal:
    token_id: str | None
    scope: Scope


def _principal(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    controller = get_controller(request)
    if not controller.settings.auth_required:
        return Principal(None, Scope.ADMIN)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            401,
            "missing token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    with controller.db.session() as session:
        row = find_token(session, credentials.credentials)
        if row is None:
            raise HTTPException(
                401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"}
            )
        return Principal(row.id, Scope(row.scope))


def require_read(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    principal = _principal(request, credentials)
    if principal.scope not in (Scope.READ, Scope.ADMIN):
        raise HTTPException(403, f"a {principal.scope.value} token cannot read the API")
    return principal


def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    principal = _principal(request, credentials)
    if principal.scope != Scope.ADMIN:
        raise HTTPException(403, f"this needs an admin token; yours is {principal.scope.value}")
    return principal


ReadAuth = Annotated[Principal, Depends(require_read)]
AdminAuth = Annotated[Principal, Depends(require_admin)]
