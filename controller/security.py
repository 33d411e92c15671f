"""Admin/read API tokens (kept only as SHA-256), one-time enrollment, and broker files.

The broker files are mosquitto's: a password file in its PBKDF2-SHA512 `$7$` format and an ACL
that confines each device to its own `lepton/v1/dev/{id}/` subtree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from lepton_edge.controller.config import HomeAssistantSettings
from lepton_edge.controller.tables import ApiToken, DeviceCredential
from lepton_edge.shared import topics

MOSQUITTO_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
TOKEN_PREFIX = "lep_"


class Scope(StrEnum):
    READ = "read"
    ADMIN = "admin"
    ENROLL = "enroll"


def hash_token(token: str) -> str:
    """Tokens are 32 random bytes, so a plain SHA-256 is enough to keep them unusable at rest."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_token(
    session: Session, scope: Scope, name: str = "", device_id: str | None = None
) -> tuple[ApiToken, str]:
    """Store a new token's hash; return the row and the token (shown once, never stored)."""
    token = new_token()
    row = ApiToken(
        id=secrets.token_hex(8),
        name=name,
        token_hash=hash_token(token),
        scope=scope.value,
        device_id=device_id,
        created_at=time.time(),
        revoked=False,
    )
    session.add(row)
    return row, token


def register_token(session: Session, token: str, scope: Scope, name: str) -> None:
    """Make a known token (e.g. the bootstrap admin token from settings) valid."""
    digest = hash_token(token)
    if session.scalar(select(ApiToken).where(ApiToken.token_hash == digest)) is None:
        session.add(
            ApiToken(
                id=secrets.token_hex(8),
                name=name,
                token_hash=digest,
                scope=scope.value,
                created_at=time.time(),
                revoked=False,
            )
        )


def find_token(session: Session, token: str) -> ApiToken | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked:
        return None
    return row


# --- enrollment -------------------------------------------------------------------------------


class EnrollError(Exception):
    pass


@dataclass
class Enrollment:
    username: str
    password: str


def enroll(session: Session, token: str, device_id: str) -> Enrollment:
    """Spend a one-time enrollment token; give `device_id` a fresh broker password."""
    topics.check_device_id(device_id)
    row = find_token(session, token)
    if row is None or row.scope != Scope.ENROLL.value:
        raise EnrollError("unknown or revoked enrollment token")
    if row.used_at is not None:
        raise EnrollError("this enrollment token was already used")
    if row.device_id and row.device_id != device_id:
        raise EnrollError(f"this enrollment token is for device {row.device_id}")
    row.used_at = time.time()
    row.device_id = device_id
    password = secrets.token_urlsafe(24)
    cred = session.get(DeviceCredential, device_id)
    line = mosquitto_hash(password)
    if cred is None:
        session.add(
            DeviceCredential(
                device_id=device_id,
                username=device_id,
                password_hash=line,
                created_at=time.time(),
            )
        )
    else:
        cred.password_hash = line
    return Enrollment(username=device_id, password=password)


# --- mosquitto files --------------------------------------------------------------------------


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """`$7$101$salt$hash` as mosquitto_passwd writes it (PBKDF2-HMAC-SHA512, 12-byte salt)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, MOSQUITTO_ITERATIONS, 64)
    return (
        f"$7${MOSQUITTO_ITERATIONS}$"
        f"{base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


def verify_mosquitto_hash(password: str, line: str) -> bool:
    _, kind, iterations, salt_b64, hash_b64 = line.split("$")
    if kind != "7":
        return False
    salt = base64.b64decode(salt_b64)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations), 64)
    return hmac.compare_digest(digest, base64.b64decode(hash_b64))


def password_file(
    controller_user: str,
    controller_password: str,
    devices: list[DeviceCredential],
    homeassistant: HomeAssistantSettings | None = None,
) -> str:
    lines = [f"{controller_user}:{mosquitto_hash(controller_password)}"]
    if homeassistant is not None and homeassistant.broker_username:
        password = homeassistant.broker_password or ""
        lines.append(f"{homeassistant.broker_username}:{mosquitto_hash(password)}")
    lines += [f"{d.username}:{d.password_hash}" for d in sorted(devices, key=lambda d: d.username)]
    return "\n".join(lines) + "\n"


def acl_file(
    controller_user: str,
    devices: list[DeviceCredential],
    homeassistant: HomeAssistantSettings | None = None,
) -> str:
    """The controller reads and writes the whole tree (and writes Home Assistant's discovery
    prefix when it announces devices); Home Assistant's login reads the tree and its prefix; a
    device only its own subtree."""
    parts = [
        "# generated by lepton-controller broker-config; do not edit",
        f"user {controller_user}",
        f"topic readwrite {topics.ROOT}/#",
    ]
    if homeassistant is not None and homeassistant.discovery:
        parts.append(f"topic write {homeassistant.discovery_prefix}/#")
    parts.append("")
    if homeassistant is not None and homeassistant.broker_username:
        parts += [
            f"user {homeassistant.broker_username}",
            f"topic read {topics.ROOT}/#",
            f"topic readwrite {homeassistant.discovery_prefix}/#",
            "",
        ]
    for d in sorted(devices, key=lambda d: d.username):
        parts += [f"user {d.username}", f"topic readwrite {topics.device_prefix(d.device_id)}", ""]
    return "\n".join(parts)


def write_broker_files(
    session: Session,
    out_dir: Path,
    controller_user: str,
    controller_password: str,
    homeassistant: HomeAssistantSettings | None = None,
) -> tuple[Path, Path]:
    devices = list(session.scalars(select(DeviceCredential)))
    out_dir.mkdir(parents=True, exist_ok=True)
    pw = out_dir / "passwords"
    acl = out_dir / "acl"
    tmp = pw.with_suffix(".tmp")
    tmp.write_text(password_file(controller_user, controller_password, devices, homeassistant))
    tmp.chmod(0o600)
    tmp.replace(pw)
    acl.write_text(acl_file(controller_user, devices, homeassistant))
    return pw, acl
