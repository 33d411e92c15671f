"""Rollouts with the real `lepton_edge.agent.service.Agent` (real link, outbox and artifact store; no
inference engine), so the controller and agent sides are checked against each other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lepton_edge.agent.config import AgentSettings
from lepton_edge.agent.service import Agent
from lepton_edge.controller.bundles import pack
from lepton_edge.shared.signing import public_pem
from tests.controller.conftest import AUTH, LiveController
from tests.controller.helpers import make_bundle, wait_for


def _agents(live: LiveController, tmp_path: Path, n: int) -> list[Agent]:
    key_file = tmp_path / "controller.pem"
    key_file.write_bytes(public_pem(live.controller.store.key.public_key()))
    agents = []
    for i in range(n):
        settings = AgentSettings(
            device_id=f"real-{i}",
            state_dir=tmp_path / f"agent-{i}",
            controller_key_file=key_file,
            telemetry_interval_s=0.2,
            mqtt={"host": "127.0.0.1", "port": live.controller.settings.mqtt.port},
            probes={"battery": "none", "thermal": "none", "gpu": "none"},
        )
        agent = Agent(settings)
        agent.start()
        agents.append(agent)
    return agents


@pytest.fixture
def setup(
    live: LiveController, tmp_path: Path
) -> Iterator[tuple[LiveController, httpx.Client, list[Agent]]]:
    make_bundle(tmp_path / "bundle", live.controller.store.key)
    agents = _agents(live, tmp_path, 3)
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=10) as http:
        assert http.post("/api/v1/bundles", content=pack(tmp_path / "bundle")).status_code == 201
        wait_for(
            lambda: len(http.get("/api/v1/devices?online=true").json()) == 3, what="3 agents online"
        )
        try:
            yield live, http, agents
        finally:
            for a in agents:
                a.stop(flush_timeout=2)


def _create(http: httpx.Client) -> str:
    r = http.post(
        "/api/v1/rollouts",
        json={
            "bundle_id": "fmnist-1",
            "target": {"all": True},
            "options": {"require_inferring": False},
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_real_agents_roll_out_to_completion(setup) -> None:  # type: ignore[no-untyped-def]
    _live, http, agents = setup
    rid = _create(http)
    wait_for(
        lambda: http.get(f"/api/v1/rollouts/{rid}").json()["state"] == "completed",
        30,
        what="completed",
    )
    for a in agents:
        assert a.active is not None and a.active.bundle_id == "fmnist-1"
    devices = http.get("/api/v1/devices").json()
    assert {d["active_bundle"] for d in devices} == {"fmnist-1"}
    stages = {e["data"].get("stage") for e in http.get("/api/v1/events?kind=deploy").json()}
    assert {"downloading", "verified", "activated"} <= stages


def test_real_canary_that_cannot_download_pauses_the_rollout(setup) -> None:  # type: ignore[no-untyped-def]
    live, http, agents = setup
    # The controller lost one artifact: the canary's download fails, nothing else is touched.
    manifest = http.get("/api/v1/bundles/fmnist-1").json()["manifest"]
    for v in manifest["variants"]:
        live.controller.store.artifact_path(v["sha256"]).unlink()
    rid = _create(http)
    status = wait_for(
        lambda: (
            (s := http.get(f"/api/v1/rollouts/{rid}").json())["state"] == "paused"
            and s["devices"][0]["state"] == "failed"
            and s
        ),
        30,
        what="paused",
    )
    assert "wave 1: 1/1 failed" in status["reason"] and "deploy failed" in status["reason"]
    assert sum(d["state"] == "pending" for d in status["devices"]) == 2
    # The canary never ran the new bundle: there is nothing to roll back, and none is sent.
    assert status["devices"][0]["rollback_command_id"] is None
    assert all(a.active is None for a in agents)


def test_a_failed_wave_rolls_back_to_the_bundle_each_device_ran(  # type: ignore[no-untyped-def]
    setup, tmp_path: Path
) -> None:
    """All three run A; B's first wave is two devices, one of which cannot store B: the wave
    fails, the one that activated B goes back to A (not to what it ran before A), the one
    that never left A gets no rollback, and the third device is not touched."""
    live, http, agents = setup
    first = _create(http)
    wait_for(lambda: http.get(f"/api/v1/rollouts/{first}").json()["state"] == "completed", 30)
    make_bundle(tmp_path / "b", live.controller.store.key, bundle_id="fmnist-2")
    assert http.post("/api/v1/bundles", content=pack(tmp_path / "b")).status_code == 201
    full = agents[1]  # the second device's disk is "full": B's download is refused
    full.store.settings = full.store.settings.model_copy(update={"min_free_mb": 10**9})
    r = http.post(
        "/api/v1/rollouts",
        json={
            "bundle_id": "fmnist-2",
            "target": {"all": True},
            "waves": [50, 100],
            "options": {"require_inferring": False, "error_threshold": 0.0},
        },
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    status = wait_for(
        lambda: (
            (s := http.get(f"/api/v1/rollouts/{rid}").json())["state"] == "paused"
            and {d["state"] for d in s["devices"]} == {"rolled_back", "failed", "pending"}
            and s
        ),
        30,
        what="wave 1 failed and rolled back",
    )
    states = {d["device_id"]: d for d in status["devices"]}
    assert states["real-0"]["state"] == "rolled_back"
    assert states["real-1"]["state"] == "failed" and "disk space" in states["real-1"]["detail"]
    assert states["real-1"]["rollback_command_id"] is None
    assert states["real-2"]["state"] == "pending"
    assert [a.active.bundle_id if a.active else None for a in agents] == ["fmnist-1"] * 3
    rollback = http.get("/api/v1/events?kind=rollback&device_id=real-0").json()
    assert rollback and rollback[0]["data"]["to_bundle"] == "fmnist-1"
