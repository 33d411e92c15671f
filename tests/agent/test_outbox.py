"""The SQLite outbox: order, sequence numbers across restarts, the bound, command ids."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from lepton_edge.agent.outbox import CommandLog, Outbox


def payload(kind: str, seq: int) -> bytes:
    return json.dumps({"kind": kind, "seq": seq}).encode()


def test_fifo_with_per_kind_sequence_numbers(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    assert box.append("telemetry", lambda s: payload("t", s)) == 0
    assert box.append("event", lambda s: payload("e", s)) == 0
    assert box.append("telemetry", lambda s: payload("t", s)) == 1
    rows = box.peek()
    assert [(r.kind, json.loads(r.payload)["seq"]) for r in rows] == [
        ("telemetry", 0),
        ("event", 0),
        ("telemetry", 1),
    ]
    assert [r.id for r in box.peek(after_id=rows[0].id)] == [rows[1].id, rows[2].id]
    box.ack([rows[0].id, rows[1].id])
    assert [r.id for r in box.peek()] == [rows[2].id]
    assert len(box) == 1


def test_survives_restart_without_reusing_numbers(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for _ in range(5):
        box.append("telemetry", lambda s: payload("t", s))
    box.ack([box.peek()[0].id])
    box.close()
    again = Outbox(tmp_path)
    assert len(again) == 4
    assert [json.loads(r.payload)["seq"] for r in again.peek()] == [1, 2, 3, 4]
    assert again.append("telemetry", lambda s: payload("t", s)) == 5
    assert again.last_id > 0
    # the numbers go on in the same epoch; a new state dir starts a new one from 0
    assert again.epoch == box.epoch and len(box.epoch) == 12
    fresh = Outbox(tmp_path / "new")
    assert fresh.epoch != box.epoch and fresh.next_seq("telemetry") == 0


def _append_then_die(state_dir: str) -> None:
    box = Outbox(Path(state_dir))
    for _ in range(3):
        box.append("telemetry", lambda s: payload("t", s))
    os.kill(os.getpid(), signal.SIGKILL)


def test_survives_sigkill(tmp_path: Path) -> None:
    proc = multiprocessing.get_context("spawn").Process(
        target=_append_then_die, args=(str(tmp_path),)
    )
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    box = Outbox(tmp_path)
    assert [json.loads(r.payload)["seq"] for r in box.peek()] == [0, 1, 2]
    assert box.next_seq("telemetry") == 3


def test_full_queue_drops_oldest_telemetry_first_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_messages=10)
    box.append("event", lambda s: payload("e", s))
    for _ in range(12):
        box.append("telemetry", lambda s: payload("t", s))
    box.append("reply", lambda s: payload("r", s))
    assert len(box) == 10
    kinds = [(r.kind, json.loads(r.payload)["seq"]) for r in box.peek(limit=100)]
    assert kinds[0] == ("event", 0)  # the event outlived older telemetry
    assert [s for k, s in kinds if k == "telemetry"] == list(range(4, 12))
    assert kinds[-1] == ("reply", 0)
    assert box.dropped == 4
    assert box.counts() == {"event": 1, "telemetry": 8, "reply": 1}
    # only events left: then the oldest event goes
    small = Outbox(tmp_path / "b", max_messages=10)
    for _ in range(11):
        small.append("event", lambda s: payload("e", s))
    assert json.loads(small.peek()[0].payload)["seq"] == 1
    assert small.dropped == 1


def test_failed_payload_build_leaves_no_trace(tmp_path: Path) -> None:
    box = Outbox(tmp_path)

    def boom(seq: int) -> bytes:
        raise ValueError("cannot encode")

    with pytest.raises(ValueError):
        box.append("telemetry", boom)
    assert len(box) == 0 and box.next_seq("telemetry") == 0


def test_command_log_dedupes_persistently_and_is_bounded(tmp_path: Path) -> None:
    log = CommandLog(tmp_path, max_ids=5)
    assert log.begin("a") is True
    log.finish("a")
    assert log.begin("a") is False
    log.close()
    log = CommandLog(tmp_path, max_ids=5)
    assert log.begin("a") is False  # survives a restart
    for i in range(10):
        assert log.begin(f"c{i}")
        log.finish(f"c{i}")
    assert log.begin("c9") is False
    assert log.begin("a") is True  # forgotten: the log is bounded


def test_command_interrupted_by_a_crash_runs_again(tmp_path: Path) -> None:
    log = CommandLog(tmp_path)
    assert log.begin("deploy-1") is True
    log.close()  # the process died before finishing it
    again = CommandLog(tmp_path)
    assert again.begin("deploy-1") is True
    again.finish("deploy-1")
    assert again.begin("deploy-1") is False


def test_command_log_keeps_the_final_reply_across_a_restart(tmp_path: Path) -> None:
    log = CommandLog(tmp_path)
    assert log.begin("deploy-2") and log.final_reply("deploy-2") is None
    log.remember("deploy-2", b'{"status": "done"}')
    log.finish("deploy-2")
    log.close()
    again = CommandLog(tmp_path)
    assert again.begin("deploy-2") is False
    assert again.final_reply("deploy-2") == b'{"status": "done"}'


def test_a_command_log_from_before_replies_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "agent.db")
    old.execute(
        "CREATE TABLE seen_commands (command_id TEXT PRIMARY KEY, seen REAL NOT NULL, "
        "finished INTEGER NOT NULL DEFAULT 0)"
    )
    old.execute("INSERT INTO seen_commands VALUES ('old-1', 1.0, 1)")
    old.commit()
    old.close()
    log = CommandLog(tmp_path)
    assert log.begin("old-1") is False and log.final_reply("old-1") is None
