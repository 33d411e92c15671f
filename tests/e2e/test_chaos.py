"""Chaos: 20 real agent processes at 5 Hz telemetry and a rollout in waves, while a seeded
schedule kills (SIGKILL) and restarts the controller 3 times, two agents twice each and the
broker once (with persistence). Afterwards the rollout has completed, every device activated
the new bundle exactly once and runs it, and every telemetry seq each agent sent is in the
database, once (a sample the broker had not acknowledged when its agent stopped is still in
that agent's outbox, and is checked to be there).

`LEPTON_CHAOS_SEED=7 pytest tests/e2e/test_chaos.py` replays one schedule.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from lepton_edge.controller.bundles import pack
from lepton_edge.controller.db import Database
from lepton_edge.controller.tables import TelemetrySample
from lepton_edge.shared.signing import load_or_create_private_key, public_pem
from tests.agent.agent_support import start_agent_process
from tests.controller.conftest import AUTH
from tests.controller.helpers import make_bundle, wait_for
from tests.controller.test_restart import _serve
from tests.mosquitto import Mosquitto, free_port

pytestmark = pytest.mark.slow

AGENTS = 20
CHAOS_S = 40.0  # the schedule's span; the rollout's waves fall inside it
#: Every queued message is written to disk before the next loop: a broker killed with -9
#: keeps what it had acknowledged (mosquitto's default saves every 30 minutes).
BROKER_DURABLE = "autosave_interval 1\nautosave_on_changes true\n"


def _agent_config(tmp_path: Path, broker: Mosquitto, key: Path, device_id: str) -> Path:
    path = tmp_path / f"{device_id}.toml"
    path.write_text(
        f'device_id = "{device_id}"\nstate_dir = "{tmp_path / device_id}"\n'
        f'controller_key_file = "{key}"\ntelemetry_interval_s = 0.2\n'
        f"[mqtt]\nport = {broker.port}\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n"
        f'[probes]\nbattery = "none"\nthermal = "none"\ngpu = "none"\n'
    )
    return path


def _agent_db(tmp_path: Path, device_id: str) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / device_id / "agent.db")


def _sent(tmp_path: Path, device_id: str) -> tuple[str, int]:
    """(epoch, how many telemetry samples) the agent made, from its own outbox database."""
    db = _agent_db(tmp_path, device_id)
    counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    db.close()
    return f"{counters['epoch']:012x}", int(counters.get("seq:telemetry", 0))


def _queued(tmp_path: Path, device_id: str) -> set[tuple[str, int]]:
    """(epoch, seq) of the telemetry still in the agent's outbox."""
    db = _agent_db(tmp_path, device_id)
    rows = db.execute("SELECT payload FROM outbox WHERE kind = 'telemetry'").fetchall()
    db.close()
    return {(m["epoch"], m["seq"]) for m in (json.loads(p) for (p,) in rows)}


def _deploys_done(tmp_path: Path, device_id: str, bundle_id: str) -> int:
    """Deploy commands of `bundle_id` this agent finished with `done` (effective deploys)."""
    db = _agent_db(tmp_path, device_id)
    rows = db.execute("SELECT reply FROM seen_commands WHERE reply IS NOT NULL").fetchall()
    db.close()
    done = 0
    for (reply,) in rows:
        r = json.loads(reply)
        if r["status"] == "done" and r["detail"] == f"bundle {bundle_id} active":
            done += 1
    return done


Reaper = Callable[[subprocess.Popen[bytes]], subprocess.Popen[bytes]]


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    """Keeps every process the test starts; whatever fails, none is left running."""
    started: list[subprocess.Popen[bytes]] = []

    def keep(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        started.append(proc)
        return proc

    yield keep
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", BROKER_DURABLE).start()
    yield broker
    broker.stop()


def test_rollout_and_telemetry_survive_kills_of_controller_agents_and_broker(
    tmp_path: Path, postgres_url: str, broker: Mosquitto, reaper: Reaper
) -> None:
    seed = int(os.environ.get("LEPTON_CHAOS_SEED", "20261206"))
    rng = random.Random(seed)
    port = free_port()
    state = tmp_path / "controller"
    key = load_or_create_private_key(state / "state" / "keys" / "signing.pem")
    pem = tmp_path / "controller.pem"
    pem.write_bytes(public_pem(key.public_key()))
    # each wave soaks 6 s, so the rollout runs through the first half of the schedule
    settings = {"INGEST__HISTORY_PER_DEVICE": "1000000", "ROLLOUT__SOAK_S": "6"}

    def serve() -> subprocess.Popen[bytes]:
        return reaper(_serve(state, postgres_url, broker, port, **settings))

    controller = serve()
    ids = [f"chaos-{i:02d}" for i in range(AGENTS)]
    configs = {d: _agent_config(tmp_path, broker, pem, d) for d in ids}

    def start_agent(device_id: str) -> subprocess.Popen[bytes]:
        return reaper(
            start_agent_process(configs[device_id], log_file=tmp_path / f"{device_id}.log")
        )

    agents = {d: start_agent(d) for d in ids}
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=10)

    def api(path: str) -> object:
        for _ in range(100):  # the controller may be down for a moment
            try:
                return http.get(f"/api/v1{path}").raise_for_status().json()
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"GET {path} kept failing")

    def rollout(bundle_id: str, waves: list[int]) -> str:
        r = http.post(
            "/api/v1/rollouts",
            json={
                "bundle_id": bundle_id,
                "target": {"all": True},
                "waves": waves,
                "options": {"require_inferring": False, "wave_timeout_s": 600},
            },
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    try:
        for name in ("chaos-a", "chaos-b"):
            make_bundle(tmp_path / name, key, bundle_id=name)
            assert http.post("/api/v1/bundles", content=pack(tmp_path / name)).status_code == 201
        wait_for(lambda: len(api("/devices?online=true")) == AGENTS, 90, 0.5, "agents online")  # type: ignore[arg-type]
        first = rollout("chaos-a", [100])
        wait_for(lambda: api(f"/rollouts/{first}")["state"] == "completed", 60, 0.5, "A everywhere")  # type: ignore[index]

        # The schedule: (time, what, whom), then each victim comes back after a short while.
        victims = rng.sample(ids, 2)
        plan: list[tuple[float, str, str]] = [
            *((rng.uniform(2, CHAOS_S / 2), "controller", "") for _ in range(3)),
            *((rng.uniform(1, CHAOS_S - 2), "agent", v) for v in victims for _ in range(2)),
            (rng.uniform(3, CHAOS_S - 4), "broker", ""),
        ]
        plan.sort()
        print(f"chaos seed {seed}: " + ", ".join(f"{t:.1f}s {w} {v}".strip() for t, w, v in plan))
        second = rollout("chaos-b", [10, 50, 100])
        start, first_kill, broker_back = time.monotonic(), float("inf"), 0.0
        pending: list[tuple[float, Callable[[], None]]] = []
        for at, what, whom in plan:
            while time.monotonic() - start < at:
                due = [p for p in pending if p[0] <= time.monotonic()]
                for p in due:
                    pending.remove(p)
                    p[1]()
                time.sleep(0.05)
            if what == "controller":
                first_kill = min(first_kill, time.time())
                if controller.poll() is None:
                    controller.send_signal(signal.SIGKILL)
                    controller.wait(10)
                controller = serve()  # waits until it is up again (a few seconds)
            elif what == "agent" and agents[whom].poll() is None:  # (not while it is down)
                agents[whom].send_signal(signal.SIGKILL)
                agents[whom].wait(10)

                def back(d: str = whom) -> None:
                    agents[d] = start_agent(d)

                pending.append((time.monotonic() + rng.uniform(0.5, 2.0), back))
            elif what == "broker":
                assert broker.proc is not None
                broker.proc.send_signal(signal.SIGKILL)
                broker.proc.wait(10)
                time.sleep(rng.uniform(0.5, 2.0))
                broker.start()
                broker_back = time.time()
        for _, back in pending:
            back()

        try:
            done = wait_for(
                lambda: (s := api(f"/rollouts/{second}"))["state"] == "completed" and s,  # type: ignore[index]
                120,
                0.5,
                "the rollout completed after the chaos",
            )
        except AssertionError:
            raise AssertionError(f"not completed: {api(f'/rollouts/{second}')}") from None
        assert {d["state"] for d in done["devices"]} == {"healthy"}
        assert done["finished_at"] > first_kill, "the rollout was over before the chaos began"
        devices = api("/devices")
        assert {d["id"]: d["active_bundle"] for d in devices} == dict.fromkeys(ids, "chaos-b")  # type: ignore[union-attr]
        # every agent back on the broker (its telemetry arrives again), so stopping it drains
        # its outbox: a broker killed sends no will, so "online" alone does not say it
        wait_for(
            lambda: all(
                (d["last_telemetry_at"] or 0) > broker_back + 1
                for d in api("/devices")  # type: ignore[union-attr]
            ),
            60,
            0.5,
            "telemetry from every agent after the broker came back",
        )
    finally:
        for proc in agents.values():  # SIGTERM: each drains its outbox, then says offline
            if proc.poll() is None:
                proc.terminate()
        slow = []
        for d, proc in agents.items():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                slow.append(d)
        assert not slow, f"no exit 60 s after SIGTERM: {slow}; " + "".join(
            (tmp_path / f"{d}.log").read_text()[-1500:] for d in slow
        )

    try:
        for d in ids:
            assert _deploys_done(tmp_path, d, "chaos-b") == 1, d
        db = Database(postgres_url)
        sent = {d: _sent(tmp_path, d) for d in ids}

        def stored() -> dict[str, list[tuple[str | None, int]]]:
            with db.session() as s:
                rows = s.execute(
                    select(TelemetrySample.device_id, TelemetrySample.epoch, TelemetrySample.seq)
                ).all()
            out: dict[str, list[tuple[str | None, int]]] = {d: [] for d in ids}
            for d, e, q in rows:
                out[d].append((e, q))
            return out

        queued = {d: len(_queued(tmp_path, d)) for d in ids}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = stored()
            if all(len(got[d]) >= count - queued[d] for d, (_, count) in sent.items()):
                break
            time.sleep(0.5)
        for d, (epoch, count) in sent.items():
            made = {(epoch, q) for q in range(count)}
            assert len(got[d]) == len(set(got[d])) and set(got[d]) <= made, d  # once, no more
            # What the broker never acknowledged is still in the agent's outbox (a busy broker
            # at shutdown): not lost, it goes out when the agent starts again.
            missing = made - set(got[d])
            assert missing <= _queued(tmp_path, d), f"{d}: lost {sorted(missing)[:10]}"
        db.close()
    finally:
        http.close()
