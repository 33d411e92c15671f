"""The command ledger on a real database: resend with backoff until final, give up after the
timeout, the first final reply stands, a late final reply still counts."""

from __future__ import annotations

from lepton_edge.controller import commands
from lepton_edge.controller.config import RolloutDefaults
from lepton_edge.controller.db import Database
from lepton_edge.controller.tables import CommandRecord
from lepton_edge.shared.messages import Reply, SetPolicy

POLICY = RolloutDefaults(resend_after_s=10, command_timeout_s=1000)


def _due_ids(db: Database, now: float) -> list[str]:
    with db.session() as session:
        return [c.command_id for _, c in commands.due(session, now, POLICY)]


def _status(db: Database, command_id: str) -> str:
    with db.session() as session:
        cmd = session.get(CommandRecord, command_id)
        assert cmd is not None
        return cmd.status


def _reply(db: Database, command_id: str, status: str, now: float) -> None:
    reply = Reply(device_id="d1", ts=now, command_id=command_id, status=status)  # type: ignore[arg-type]
    with db.session() as session:
        commands.apply_reply(session, reply, now)


def test_resent_with_backoff_until_a_final_reply(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    with db.session() as session:
        commands.record(session, "d1", SetPolicy(command_id="p1", ts=0), None, now=0)
    assert _due_ids(db, 0) == ["p1"]  # recorded, never published
    with db.session() as session:
        commands.mark_sent(session, ["p1"], 0)
    assert _status(db, "p1") == "sent"
    resent_at = [t for t in range(0, 400) if _due_ids(db, t)]
    assert resent_at == [10, 30, 70, 150, 310]  # 10 s, then doubling
    _reply(db, "p1", "accepted", 311)
    assert _due_ids(db, 700) == ["p1"]  # accepted is not final: still resent
    _reply(db, "p1", "done", 701)
    _reply(db, "p1", "failed", 702)  # a later reply does not overwrite the first final one
    assert _status(db, "p1") == "done"
    assert _due_ids(db, 5000) == []
    db.close()


def test_given_up_after_the_timeout_and_a_late_final_reply_still_counts(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    with db.session() as session:
        commands.record(session, "d1", SetPolicy(command_id="p2", ts=0), None, now=0)
        commands.mark_sent(session, ["p2"], 0)
    assert _due_ids(db, 1001) == []
    assert _status(db, "p2") == "timed_out"
    _reply(db, "p2", "duplicate", 1002)  # still running there: says nothing
    assert _status(db, "p2") == "timed_out"
    _reply(db, "p2", "done", 1003)
    assert _status(db, "p2") == "done"
    db.close()
