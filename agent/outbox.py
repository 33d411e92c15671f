"""Durable agent bookkeeping in SQLite (state dir): the store-and-forward outbox and the
commands already handled, with their final replies.

Every telemetry sample, event and reply is appended here first and deleted only when the broker
acknowledged it (PUBACK), so nothing is lost or reordered across a broker outage or an agent
restart. Sequence numbers are assigned in the same transaction as the insert, so a number is
never used twice or skipped; they carry the `epoch` of this database, so a controller tells a
new state dir (numbers from 0 again) from a jump. The queue is bounded: when full, the oldest telemetry goes first
(events and replies are kept longer) and the drop is counted.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DB_FILE = "agent.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen_commands (
    command_id TEXT PRIMARY KEY,
    seen REAL NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0
);
"""
#: Added after the first release: the final reply, sent again when the command comes again.
_REPLY_COLUMN = "ALTER TABLE seen_commands ADD COLUMN reply BLOB"

#: Kinds dropped first when the queue is full.
EXPENDABLE = "telemetry"


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL survives a killed process; only a power cut can lose the last commits.
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


@dataclass(frozen=True)
class Queued:
    id: int
    kind: str
    payload: bytes


class Outbox:
    """A bounded FIFO of (kind, payload) with per-kind sequence counters. Thread-safe."""

    def __init__(self, state_dir: Path, max_messages: int = 50_000) -> None:
        self.path = state_dir / DB_FILE
        self.max_messages = max_messages
        self._db = _connect(self.path)
        self._lock = threading.Lock()
        row = self._db.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM outbox").fetchone()
        self._count: int = row[0]
        #: id of the newest row; lets a sender skip the query when nothing is new.
        self.last_id: int = row[1]
        with self._lock:
            if not self._counter("epoch"):
                self._set_counter("epoch", secrets.randbits(48) | 1)
            #: names this database's sequence numbers: a new one means they started again at 0
            self.epoch = f"{self._counter('epoch'):012x}"

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    @property
    def dropped(self) -> int:
        """Messages dropped from a full queue since the state dir was created."""
        with self._lock:
            return self._counter("dropped")

    def next_seq(self, kind: str) -> int:
        """The sequence number the next `append(kind, …)` will get."""
        with self._lock:
            return self._counter(f"seq:{kind}")

    def append(self, kind: str, make: Callable[[int], bytes]) -> int:
        """Append `make(seq)` with the next sequence number of `kind`; return that number.

        Number and row are committed together, so a crash never reuses or skips a number.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._counter(f"seq:{kind}")
                payload = make(seq)
                cur = self._db.execute(
                    "INSERT INTO outbox (kind, payload, created) VALUES (?, ?, ?)",
                    (kind, payload, time.time()),
                )
                self._set_counter(f"seq:{kind}", seq + 1)
                dropped = self._enforce_bound(self._count + 1)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count += 1 - dropped
            self.last_id = int(cur.lastrowid or self.last_id)
            return seq

    def _enforce_bound(self, count: int) -> int:
        excess = count - self.max_messages
        if excess <= 0:
            return 0
        removed = 0
        for where in ("kind = ?", "kind != ?"):  # oldest telemetry first, then the rest
            if removed >= excess:
                break
            cur = self._db.execute(
                f"DELETE FROM outbox WHERE id IN "
                f"(SELECT id FROM outbox WHERE {where} ORDER BY id LIMIT ?)",
                (EXPENDABLE, excess - removed),
            )
            removed += cur.rowcount
        self._set_counter("dropped", self._counter("dropped") + removed)
        log.warning("outbox full (%d): dropped %d oldest message(s)", self.max_messages, removed)
        return removed

    def peek(self, after_id: int = 0, limit: int = 100) -> list[Queued]:
        """The oldest `limit` messages with id > `after_id`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Queued(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def ack(self, ids: Iterable[int]) -> None:
        """Delete delivered messages."""
        id_list = list(ids)
        if not id_list:
            return
        with self._lock:
            cur = self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in id_list])
            self._count -= max(0, cur.rowcount)

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall()
        return {str(k): int(n) for k, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CommandLog:
    """The commands handled and their final replies, so a redelivered command does nothing
    twice and its sender hears the outcome again (a reply can be lost on the way). Bounded.

    A command is `begin`-ed before it runs and `finish`-ed after, whatever its outcome; one
    interrupted by a crash (begun, never finished) runs again if it is delivered again.
    """

    def __init__(self, state_dir: Path, max_ids: int = 10_000) -> None:
        self.max_ids = max_ids
        self._db = _connect(state_dir / DB_FILE)
        self._lock = threading.Lock()
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(seen_commands)")}
        if "reply" not in columns:
            self._db.execute(_REPLY_COLUMN)

    def begin(self, command_id: str) -> bool:
        """True if `command_id` should run: never seen, or begun by a process that died."""
        with self._lock:
            row = self._db.execute(
                "SELECT finished FROM seen_commands WHERE command_id = ?", (command_id,)
            ).fetchone()
            if row is not None:
                return not row[0]
            self._db.execute(
                "INSERT INTO seen_commands (command_id, seen) VALUES (?, ?)",
                (command_id, time.time()),
            )
            self._db.execute(
                "DELETE FROM seen_commands WHERE command_id IN (SELECT command_id FROM "
                "seen_commands ORDER BY seen DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (self.max_ids,),
            )
            return True

    def finish(self, command_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE seen_commands SET finished = 1 WHERE command_id = ?", (command_id,)
            )

    def remember(self, command_id: str, reply: bytes) -> None:
        """Keep the command's final reply (as sent) for when the command comes again."""
        with self._lock:
            self._db.execute(
                "INSERT INTO seen_commands (command_id, seen, finished, reply) VALUES (?, ?, 1, ?)"
                " ON CONFLICT(command_id) DO UPDATE SET reply = excluded.reply",
                (command_id, time.time(), reply),
            )

    def final_reply(self, command_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT reply FROM seen_commands WHERE command_id = ?", (command_id,)
            ).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
