"""The command ledger: record, send, resend and reply, for every command the controller sends.

A command is recorded with its id before it is published, so a controller restarted at any
point only resends it under the same id. Until a final reply comes it is resent with
exponential backoff, and after `command_timeout_s` it is given up (`timed_out`). The agent keeps
each command's final reply and publishes it again when the id comes again, so a reply lost on
the way is recovered by the next resend; a device that runs the bundle before its reply comes
(its retained state says so) counts as done as well.
"""

from __future__ import annotations

import logging
import uuid

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session

from lepton_edge.controller.config import RolloutDefaults
from lepton_edge.controller.tables import CommandRecord
from lepton_edge.shared.messages import FINAL_REPLIES, Command, CommandMessage, Reply

log = logging.getLogger(__name__)

#: Statuses after which a command is never sent again.
FINAL = (*FINAL_REPLIES, "timed_out")
#: Resends wait resend_after_s, then twice that, ... up to 2**MAX_DOUBLINGS times it.
MAX_DOUBLINGS = 5

_COMMAND: TypeAdapter[Command] = TypeAdapter(Command)


def new_command_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


def record(
    session: Session, device_id: str, command: CommandMessage, rollout_id: str | None, now: float
) -> CommandRecord:
    """Write the command down before it is published (its id is the idempotency key)."""
    row = CommandRecord(
        id=command.command_id,
        device_id=device_id,
        type=command.type,
        payload=command.model_dump(mode="json"),
        rollout_id=rollout_id,
        status="pending",
        detail="",
        attempts=0,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    return row


def due(session: Session, now: float, policy: RolloutDefaults) -> list[tuple[str, CommandMessage]]:
    """Commands to publish (again) now: never sent, or unanswered past their backoff. Gives
    up on those older than `command_timeout_s` (status `timed_out`)."""
    out = []
    for cmd in session.scalars(select(CommandRecord).where(CommandRecord.status.not_in(FINAL))):
        if now - cmd.created_at > policy.command_timeout_s:
            cmd.status = "timed_out"
            cmd.detail = f"no final reply in {policy.command_timeout_s:g} s"
            cmd.updated_at = now
            log.warning("command %s to %s timed out", cmd.id, cmd.device_id)
            continue
        if cmd.sent_at is not None:
            wait = policy.resend_after_s * 2 ** min(cmd.attempts, MAX_DOUBLINGS)
            if now - cmd.sent_at < wait:
                continue
            cmd.attempts += 1
            cmd.sent_at = now  # the next wait counts from this resend
        out.append((cmd.device_id, _COMMAND.validate_python(cmd.payload)))
    return out


def mark_sent(session: Session, command_ids: list[str], now: float) -> None:
    """Published (at least once): the backoff counts from the first time."""
    if not command_ids:
        return
    for cmd in session.scalars(select(CommandRecord).where(CommandRecord.id.in_(command_ids))):
        cmd.sent_at = cmd.sent_at or now
        if cmd.status == "pending":
            cmd.status = "sent"


def apply_reply(session: Session, reply: Reply, now: float) -> CommandRecord | None:
    """A device's reply to one of our commands; the record, when it moved to a new status."""
    cmd = session.get(CommandRecord, reply.command_id)
    if cmd is None or cmd.device_id != reply.device_id:
        log.info("reply from %s to unknown command %s", reply.device_id, reply.command_id)
        return None
    if reply.status == "duplicate":
        return None  # an older agent, or the command is still running there
    if cmd.status in FINAL and cmd.status != "timed_out":
        return None  # the first final reply stands (a resent one says the same)
    cmd.status = reply.status
    cmd.detail = reply.detail
    cmd.result = reply.result or None
    cmd.updated_at = now
    return cmd


def finish(cmd: CommandRecord, status: str, detail: str, now: float) -> None:
    """A final status the controller learnt otherwise (the device's own state)."""
    cmd.status = status
    cmd.detail = detail
    cmd.updated_at = now
