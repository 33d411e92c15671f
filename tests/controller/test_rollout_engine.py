"""The rollout state machine on a real database, driven tick by tick with explicit times:
health gates (p99 factor, error rate, inferring), wave timeout, leader-only loop, settings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.controller.api.rollouts import RolloutCreate, rollout_out
from lepton_edge.controller.bundles import pack
from lepton_edge.controller.config import load_settings
from lepton_edge.controller.core import Controller
from lepton_edge.controller.fleet import Batch
from lepton_edge.controller.tables import Device
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.messages import (
    CommandMessage,
    CpuSample,
    Deploy,
    InferenceStats,
    MemorySample,
    Reply,
    State,
    Telemetry,
)
from tests.controller.conftest import make_settings
from tests.controller.helpers import make_bundle, profile


class Fleet:
    """A controller without broker or HTTP; devices speak through `fleet.apply` batches."""

    def __init__(self, tmp_path: Path, db_url: str, **rollout: Any) -> None:
        self.ctl = Controller(make_settings(tmp_path, db_url, rollout_loop=False, rollout=rollout))
        self.ctl.db.migrate()
        self.sent: list[tuple[str, CommandMessage]] = []
        self.ctl.engine.publish = lambda d, c: self.sent.append((d, c)) or True  # type: ignore[func-returns-value]
        make_bundle(tmp_path / "b", self.ctl.store.key)
        with self.ctl.db.session() as s:
            self.ctl.store.add_archive(s, pack(tmp_path / "b"))
        self.seq: dict[str, int] = {}

    def apply(self, **kw: Any) -> None:
        with self.ctl.db.session() as s:
            self.ctl.fleet.apply(s, Batch(**kw))

    def online(self, *ids: str) -> None:
        self.apply(
            states=[
                State(device_id=d, ts=time.time(), status="online", hardware=profile()) for d in ids
            ]
        )

    def telemetry(
        self, device: str, bundle: str | None, p99: float = 1.0, errors: int = 0, frames: int = 100
    ) -> None:
        seq = self.seq[device] = self.seq.get(device, -1) + 1
        inference = (
            InferenceStats(frames=frames, errors=errors, latency_p99_ms=p99)
            if frames or errors
            else None
        )
        self.apply(
            telemetry=[
                (
                    t := Telemetry(
                        device_id=device,
                        ts=time.time(),
                        seq=seq,
                        cpu=CpuSample(percent=1),
                        memory=MemorySample(used_mb=1, available_mb=1, percent=1),
                        inference=inference,
                        active_bundle=bundle,
                    ),
                    t.model_dump_json(exclude_none=True),
                )
            ]
        )

    def finish_deploy(self, device: str) -> None:
        cmd = next(c for d, c in reversed(self.sent) if d == device and isinstance(c, Deploy))
        self.apply(
            replies=[
                Reply(device_id=device, ts=time.time(), command_id=cmd.command_id, status="done")
            ]
        )
        self.apply(
            states=[
                State(
                    device_id=device,
                    ts=time.time(),
                    status="online",
                    hardware=profile(),
                    active_bundle=cmd.bundle_id,
                )
            ]
        )

    def create(self, **body: Any) -> str:
        with self.ctl.db.session() as s:
            request = RolloutCreate.model_validate(
                {"bundle_id": "fmnist-1", "target": {"all": True}, **body}
            )
            r = self.ctl.engine.create(
                s, request.bundle_id, request.target, request.waves, request.options
            )
            return r.id

    def status(self, rid: str) -> dict[str, Any]:
        from lepton_edge.controller.tables import Rollout

        with self.ctl.db.session() as s:
            return rollout_out(s, s.get(Rollout, rid)).model_dump()  # type: ignore[arg-type]


def test_p99_regression_fails_the_canary_and_rolls_it_back(tmp_path: Path, db_url: str) -> None:
    f = Fleet(tmp_path, db_url, p99_factor=1.5)
    f.online("a", "b")
    f.telemetry("a", None, p99=2.0)  # baseline before the deploy: 2 ms
    rid = f.create(waves=[50, 100])
    f.ctl.engine.tick()
    assert [d for d, c in f.sent] == ["a"]
    f.finish_deploy("a")
    f.telemetry("a", "fmnist-1", p99=3.5)  # 1.75 x slower
    f.ctl.engine.tick()
    st = f.status(rid)
    assert st["state"] == "paused" and "p99 3.50 ms > 1.5 x 2.00 ms" in st["reason"]
    assert type(f.sent[-1][1]).__name__ == "Rollback" and f.sent[-1][0] == "a"
    assert st["devices"][0]["state"] == "rolling_back"


def test_error_rate_and_inferring_gate(tmp_path: Path, db_url: str) -> None:
    f = Fleet(tmp_path, db_url, max_error_rate=0.05)
    f.online("a")
    rid = f.create()
    f.ctl.engine.tick()
    f.finish_deploy("a")
    f.telemetry("a", "fmnist-1", frames=0)  # installed but not inferring: not healthy yet
    f.ctl.engine.tick()
    assert f.status(rid)["devices"][0]["state"] == "deploying"
    f.telemetry("a", "fmnist-1", frames=96, errors=4)  # 4 % errors: under 5 %
    f.ctl.engine.tick()
    assert f.status(rid)["state"] == "completed"


def test_wave_timeout_pauses_and_resume_waits_again(tmp_path: Path, db_url: str) -> None:
    f = Fleet(tmp_path, db_url, wave_timeout_s=5)
    f.online("a")
    rid = f.create(options={"require_inferring": False})
    now = time.time()
    f.ctl.engine.tick(now)
    f.ctl.engine.tick(now + 6)  # no reply at all
    st = f.status(rid)
    assert st["state"] == "paused" and "timed out after 5 s" in st["reason"]
    with f.ctl.db.session() as s:
        f.ctl.engine.resume(s, rid)
    f.finish_deploy("a")
    f.ctl.engine.tick()
    assert f.status(rid)["state"] == "completed"
    assert sum(isinstance(c, Deploy) for _, c in f.sent) == 1  # the same deploy, not a second one


def test_at_most_max_concurrent_deploys_at_once(tmp_path: Path, db_url: str) -> None:
    """A wave of five with room for two: two deploys, then one more as each finishes."""
    f = Fleet(tmp_path, db_url, soak_s=0)
    f.online("a", "b", "c", "d", "e")
    rid = f.create(waves=[100], options={"require_inferring": False, "max_concurrent_deploys": 2})

    def deployed() -> list[str]:
        return [d for d, c in f.sent if isinstance(c, Deploy)]

    f.ctl.engine.tick()
    assert deployed() == ["a", "b"]
    f.ctl.engine.tick()  # nothing finished: nothing more sent
    assert deployed() == ["a", "b"]
    f.finish_deploy("a")
    f.ctl.engine.tick()  # a is healthy now; its slot goes to c
    f.ctl.engine.tick()
    assert deployed() == ["a", "b", "c"]
    for device in ("b", "c", "d", "e"):
        if device not in deployed():
            f.ctl.engine.tick()
        f.finish_deploy(device)
        f.ctl.engine.tick()
    assert f.status(rid)["state"] == "completed" and deployed() == ["a", "b", "c", "d", "e"]
    with pytest.raises(ValueError):
        RolloutCreate.model_validate(
            {"bundle_id": "x", "target": {"all": True}, "options": {"max_concurrent_deploys": 0}}
        )


def test_rollout_loop_runs_only_on_the_leader(tmp_path: Path, db_url: str) -> None:
    class Follower:
        def is_leader(self) -> bool:
            return False

        def close(self) -> None:
            pass

    f = Fleet(tmp_path, db_url, tick_s=0.05)
    f.online("a")
    rid = f.create()
    f.ctl.engine.leader = Follower()
    f.ctl.engine.start()
    time.sleep(0.4)
    f.ctl.engine.stop()
    assert f.sent == [] and f.ctl.engine.ticks == 0
    assert f.status(rid)["devices"][0]["state"] == "pending"


def test_settings_from_toml_env_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "controller.toml"
    toml.write_text(
        'http_port = 9000\nmax_bundle_upload_mb = 100\n[rollout]\nsoak_s = 2\n[mqtt]\nhost = "broker"\n'
    )
    monkeypatch.setenv("LEPTON_CONTROLLER_MQTT__PORT", "1884")
    monkeypatch.setenv("LEPTON_CONTROLLER_MAX_BUNDLE_UPLOAD_MB", "200")
    monkeypatch.setenv("LEPTON_CONTROLLER_HTTP_PORT", "9050")
    s = load_settings(toml, http_port=9100, database_url=None)
    # flag beats env beats file (the agent's order too); nested sections merge across sources
    assert (s.http_port, s.rollout.soak_s, s.mqtt.host, s.mqtt.port) == (9100, 2, "broker", 1884)
    assert s.max_bundle_upload_mb == 200 and s.database_url is None
    toml.write_text("[rollout]\nsoak = 2\n")
    with pytest.raises(UserError, match=r"rollout\.soak"):
        load_settings(toml)
    toml.write_text("http_port = ")
    with pytest.raises(UserError, match="not valid TOML"):
        load_settings(toml)
    with pytest.raises(UserError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_a_last_sample_sharing_a_batch_with_the_will_leaves_the_device_offline(
    tmp_path: Path, db_url: str
) -> None:
    fleet = Fleet(tmp_path, db_url)
    fleet.online("d1")
    sample = Telemetry(
        device_id="d1",
        ts=time.time(),
        seq=0,
        cpu=CpuSample(percent=1),
        memory=MemorySample(used_mb=1, available_mb=1, percent=1),
    )
    fleet.apply(
        states=[State(device_id="d1", ts=time.time(), status="offline")],
        telemetry=[(sample, sample.model_dump_json(exclude_none=True))],
    )
    with fleet.ctl.db.session() as s:
        device = s.get(Device, "d1")
        assert device is not None
        assert device.online is False and device.telemetry_count == 1


@pytest.mark.postgres
def test_pause_waits_for_another_replicas_tick_and_decides_on_what_it_wrote(
    tmp_path: Path, postgres_url: str
) -> None:
    """Another replica's tick holds the rollout's row (FOR UPDATE) and completes the rollout;
    a pause sent meanwhile waits for it and then refuses (409): it must not turn a completed
    rollout into a paused one from what it read before."""
    import threading

    from sqlalchemy import select

    from lepton_edge.controller.rollout import RolloutError
    from lepton_edge.controller.tables import Rollout

    f = Fleet(tmp_path, postgres_url)
    f.online("a")
    rid = f.create(options={"require_inferring": False})
    outcome: list[str] = []
    with f.ctl.db.session() as other:  # the other replica, mid-tick
        row = other.execute(select(Rollout).where(Rollout.id == rid).with_for_update()).scalar_one()

        def pause() -> None:
            with f.ctl.db.session() as s:
                try:
                    outcome.append(f.ctl.engine.pause(s, rid).state)
                except RolloutError as exc:
                    outcome.append(f"{exc.status}: {exc}")

        waiter = threading.Thread(target=pause)
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and not outcome  # waiting for the row
        row.state = "completed"
        other.commit()
    waiter.join(10)
    assert outcome == [f"409: rollout {rid} is completed, not running"]
    assert f.status(rid)["state"] == "completed"
