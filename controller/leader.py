"""Leader election: the rollout loop runs only while this controller is the leader.

Several controllers may share one PostgreSQL database; exactly one of them drives rollouts.
`PostgresLeader` holds a session-level advisory lock on a connection of its own: PostgreSQL
releases the lock the moment that session ends, so when the leader dies (even by SIGKILL: the
kernel closes its socket) a follower's next attempt wins. A leader that loses its connection
steps down. On SQLite there is one controller, and `AlwaysLeader` leads by definition.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Name of the advisory lock; controllers sharing a database must agree on it.
LOCK_NAME = "lepton-edge/rollout-leader"


class Leader(Protocol):
    def is_leader(self) -> bool: ...

    def close(self) -> None: ...


class AlwaysLeader:
    """A single controller leads by definition."""

    def is_leader(self) -> bool:
        return True

    def close(self) -> None:
        pass


def lock_key(name: str = LOCK_NAME) -> int:
    """A stable signed 64-bit key for `pg_try_advisory_lock(bigint)`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def libpq_url(database_url: str) -> str:
    """`postgresql+psycopg://…` (SQLAlchemy) -> `postgresql://…` (libpq/psycopg)."""
    scheme, sep, rest = database_url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


class PostgresLeader:
    """Campaign for the advisory lock in a background thread; `is_leader()` never blocks.

    Every `interval_s` a follower tries `pg_try_advisory_lock` and the leader checks that its
    session (and so its lock) is still alive; a partitioned leader steps down instead of leading
    on.
    `on_change(leading)` is called from the election thread on every change.
    """

    def __init__(
        self,
        database_url: str,
        *,
        interval_s: float = 1.0,
        name: str = LOCK_NAME,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._url = libpq_url(database_url)
        self._interval_s = interval_s
        self._key = lock_key(name)
        self._on_change = on_change
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._conn: Any = None
        self._thread = threading.Thread(target=self._campaign, name="leader-election", daemon=True)
        self._thread.start()

    def is_leader(self) -> bool:
        return self._leading.is_set()

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        return self._leading.wait(timeout)

    def close(self) -> None:
        """Step down: closing the session releases the lock for the next controller at once."""
        self._stop.set()
        self._thread.join(timeout=self._interval_s * 5 + 5)
        self._disconnect()

    # --- the election thread ----------------------------------------------------------------

    def _campaign(self) -> None:
        while not self._stop.is_set():
            try:
                self._connect()
                if self.is_leader():
                    self._conn.execute("SELECT 1")  # is the session holding the lock alive?
                else:
                    row = self._conn.execute(
                        "SELECT pg_try_advisory_lock(%s)", (self._key,)
                    ).fetchone()
                    if row and row[0]:
                        self._set(True)
            except Exception as exc:  # any database error means we may no longer hold the lock
                if self.is_leader():
                    log.warning("lost the leader lock's database session: %s", exc)
                else:
                    log.debug("leader election: %s", exc)
                self._set(False)
                self._disconnect()
            self._stop.wait(self._interval_s)
        self._set(False)

    def _connect(self) -> None:
        if self._conn is not None and not self._conn.closed:
            return
        import psycopg

        # The leader gives up a broken session (client side: unacknowledged data for 2
        # intervals) sooner than PostgreSQL frees its lock (server side: keepalives, about 4
        # intervals), so two controllers never both believe they lead for long; commands are
        # idempotent by command id, which covers the rest.
        step = max(1, round(self._interval_s))
        self._conn = psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(2, step * 3),
            application_name="lepton-controller leader election",
            keepalives=1,
            keepalives_idle=step,
            keepalives_interval=step,
            keepalives_count=2,
            tcp_user_timeout=step * 2000,
            options=(
                f"-c tcp_keepalives_idle={step} -c tcp_keepalives_interval={step} "
                "-c tcp_keepalives_count=3"
            ),
        )

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                conn.close()

    def _set(self, leading: bool) -> None:
        if leading == self.is_leader():
            return
        if leading:
            self._leading.set()
            log.info("this controller is now the leader (drives rollouts)")
        else:
            self._leading.clear()
            log.info("this controller is no longer the leader")
        if self._on_change is not None:
            try:
                self._on_change(leading)
            except Exception:
                log.exception("leader on_change callback failed")


def make_leader(database_url: str, *, interval_s: float = 1.0) -> Leader:
    """The leader election fitting `database_url`: PostgreSQL advisory lock, else always."""
    if database_url.startswith(("postgresql", "postgres://")):
        return PostgresLeader(database_url, interval_s=interval_s)
    return AlwaysLeader()
