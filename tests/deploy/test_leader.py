"""Leader election against the real PostgreSQL: one leader at a time, fail-over on death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lepton_edge.controller.leader import (
    AlwaysLeader,
    PostgresLeader,
    libpq_url,
    lock_key,
    make_leader,
)
from tests.deploy.support import ControllerProcess

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def leaders(postgres_url: str) -> Iterator[Callable[[], PostgresLeader]]:
    made: list[PostgresLeader] = []

    def make() -> PostgresLeader:
        leader = PostgresLeader(postgres_url, interval_s=0.2)
        made.append(leader)
        return leader

    yield make
    for leader in made:
        leader.close()


def test_sqlite_controller_always_leads(tmp_path: Path) -> None:
    leader = make_leader(f"sqlite:///{tmp_path / 'c.db'}")
    assert isinstance(leader, AlwaysLeader) and leader.is_leader()


def test_lock_key_and_url_are_stable() -> None:
    assert lock_key() == lock_key("lepton-edge/rollout-leader")
    assert lock_key("a") != lock_key("b")
    assert -(2**63) <= lock_key() < 2**63
    assert libpq_url("postgresql+psycopg://u:p@h:5/db") == "postgresql://u:p@h:5/db"


@pytest.mark.postgres
def test_make_leader_picks_postgres(postgres_url: str) -> None:
    leader = make_leader(postgres_url, interval_s=0.2)
    try:
        assert isinstance(leader, PostgresLeader)
        assert leader.wait_for_leadership(10)
    finally:
        leader.close()


@pytest.mark.postgres
def test_exactly_one_leads_and_closing_hands_over(
    leaders: Callable[[], PostgresLeader],
) -> None:
    first, second, third = leaders(), leaders(), leaders()
    assert wait_until(lambda: sum(x.is_leader() for x in (first, second, third)) == 1)
    time.sleep(1.0)  # several election rounds: still exactly one
    assert sum(x.is_leader() for x in (first, second, third)) == 1
    old = next(x for x in (first, second, third) if x.is_leader())
    old.close()
    rest = [x for x in (first, second, third) if x is not old]
    assert wait_until(lambda: sum(x.is_leader() for x in rest) == 1)
    assert not old.is_leader()


@pytest.mark.postgres
def test_leader_whose_session_is_killed_steps_down(
    leaders: Callable[[], PostgresLeader], postgres_url: str
) -> None:
    import psycopg

    changes: list[bool] = []
    leader = PostgresLeader(postgres_url, interval_s=0.2, on_change=changes.append)
    try:
        assert leader.wait_for_leadership(10)
        follower = leaders()
        with psycopg.connect(libpq_url(postgres_url), autocommit=True) as admin:
            killed = admin.execute(
                # only this test's database: pg_locks shows the whole cluster
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall()
        assert killed == [(True,)]
        assert wait_until(follower.is_leader)
        # The old leader notices at its next check (within one interval), then campaigns again
        # while the follower holds the lock.
        assert wait_until(lambda: not leader.is_leader(), timeout=2)
        # on_change runs on the election thread just after the flag flips
        assert wait_until(lambda: changes[:2] == [True, False], timeout=2), changes
        time.sleep(0.6)
        assert not leader.is_leader() and follower.is_leader()
    finally:
        leader.close()


CAMPAIGN = """
import sys, time
from lepton_edge.controller.leader import PostgresLeader
leader = PostgresLeader(sys.argv[1], interval_s=0.2)
leader.wait_for_leadership(20)
print("leading" if leader.is_leader() else "not leading", flush=True)
time.sleep(600)
"""


@pytest.mark.postgres
def test_sigkilled_leader_process_fails_over(
    leaders: Callable[[], PostgresLeader], postgres_url: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CAMPAIGN, postgres_url],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "leading"
        follower = leaders()
        time.sleep(0.6)
        assert not follower.is_leader()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_until(follower.is_leader, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.postgres
@pytest.mark.slow
def test_controllers_starting_together_migrate_one_at_a_time(
    controller_factory: Callable[..., ControllerProcess], postgres_url: str, tmp_path: Path
) -> None:
    """Three controllers on a fresh database at once (a fleet-wide restart after an upgrade):
    the migration runs under an advisory lock, every one comes up, exactly one leads."""
    settings = {"database_url": postgres_url, "state_dir": str(tmp_path / "shared-state")}
    (tmp_path / "shared-state").mkdir()
    controllers = [controller_factory(settings, wait=False) for _ in range(3)]
    health = [c.wait_healthy(90) for c in controllers]
    assert all(h["database"] == "postgresql" for h in health)
    assert wait_until(lambda: sum(c.wait_healthy()["leader"] for c in controllers) == 1)
