"""Rollouts end to end: real mosquitto, real HTTP downloads, simulated agents."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from lepton_edge.controller.bundles import pack
from lepton_edge.controller.rollout import plan_waves
from lepton_edge.shared.signing import public_pem
from tests.controller.conftest import AUTH, LiveController
from tests.controller.helpers import SimAgent, make_bundle, wait_for


def test_plan_waves_gives_every_wave_a_device() -> None:
    assert plan_waves(200, [1, 10, 50, 100]) == [2, 20, 100, 200]
    assert plan_waves(4, [1, 10, 50, 100]) == [1, 2, 3, 4]
    assert plan_waves(2, [1, 10, 50, 100]) == [1, 2]
    assert plan_waves(1, [1, 10, 50, 100]) == [1]
    assert plan_waves(10, [50]) == [10]


@pytest.fixture
def fleet(live: LiveController, tmp_path) -> Iterator[tuple[LiveController, httpx.Client]]:  # type: ignore[no-untyped-def]
    make_bundle(tmp_path / "bundle", live.controller.store.key)
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=10) as http:
        r = http.post("/api/v1/bundles", content=pack(tmp_path / "bundle"))
        assert r.status_code == 201, r.text
        yield live, http


def _agents(live: LiveController, n: int, **kw) -> list[SimAgent]:  # type: ignore[no-untyped-def]
    pem = public_pem(live.controller.store.key.public_key())
    return [
        SimAgent(f"dev-{i:02d}", live.controller.settings.mqtt.port, pem, **kw).start()
        for i in range(n)
    ]


def _online(http: httpx.Client, n: int) -> None:
    wait_for(lambda: len(http.get("/api/v1/devices?online=true").json()) == n, what=f"{n} online")


def test_all_healthy_completes_through_four_waves(fleet) -> None:  # type: ignore[no-untyped-def]
    live, http = fleet
    agents = _agents(live, 4)
    try:
        _online(http, 4)
        r = http.post("/api/v1/rollouts", json={"bundle_id": "fmnist-1", "target": {"all": True}})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        assert [w["devices"] for w in r.json()["waves"]] == [1, 1, 1, 1]
        done = wait_for(
            lambda: (s := http.get(f"/api/v1/rollouts/{rid}").json())["state"] == "completed" and s,
            what="rollout completed",
        )
        assert {d["state"] for d in done["devices"]} == {"healthy"}
        assert all(d["ladder"]["performance"] for d in done["devices"])
        for a in agents:
            assert a.installs["fmnist-1"] == 1 and len(a.deploy_commands) == 1
        assert all(d["active_bundle"] == "fmnist-1" for d in http.get("/api/v1/devices").json())
        metrics = http.get("/metrics").text
        assert 'lepton_rollouts{state="completed"} 1.0' in metrics
        assert "lepton_rollout_wave_seconds_count 4.0" in metrics  # each wave timed once
    finally:
        for a in agents:
            a.stop()


def test_failing_canary_pauses_and_rolls_back(fleet) -> None:  # type: ignore[no-untyped-def]
    live, http = fleet
    agents = _agents(live, 3, mode="errors")  # installs fine, then reports inference errors
    try:
        _online(http, 3)
        r = http.post("/api/v1/rollouts", json={"bundle_id": "fmnist-1", "target": {"all": True}})
        rid = r.json()["id"]
        paused = wait_for(
            lambda: (
                (s := http.get(f"/api/v1/rollouts/{rid}").json())["state"] == "paused"
                and s["devices"][0]["state"] == "rolled_back"
                and s
            ),
            what="paused + rolled back",
        )
        assert "wave 1: 1/1 failed" in paused["reason"] and "error rate" in paused["reason"]
        canary = next(a for a in agents if a.device_id == paused["devices"][0]["device_id"])
        assert canary.rollbacks == 1 and canary.active_bundle is None
        others = [a for a in agents if a is not canary]
        assert all(not a.deploy_commands for a in others)  # never reached wave 2
        # pause/resume/abort through the API
        assert http.post(f"/api/v1/rollouts/{rid}/pause").status_code == 409
        assert http.post(f"/api/v1/rollouts/{rid}/abort").json()["state"] == "aborted"
        assert http.post(f"/api/v1/rollouts/{rid}/resume").status_code == 409
        assert http.post("/api/v1/rollouts/nope/abort").status_code == 404
    finally:
        for a in agents:
            a.stop()


def test_failed_install_pauses_then_resume_retries(fleet) -> None:  # type: ignore[no-untyped-def]
    live, http = fleet
    agents = _agents(live, 2, mode="fail_deploy")
    try:
        _online(http, 2)
        rid = http.post(
            "/api/v1/rollouts", json={"bundle_id": "fmnist-1", "target": {"all": True}}
        ).json()["id"]
        wait_for(lambda: http.get(f"/api/v1/rollouts/{rid}").json()["state"] == "paused")
        for a in agents:
            a.mode = "healthy"
        resumed = http.post(f"/api/v1/rollouts/{rid}/resume")
        assert resumed.status_code == 200 and resumed.json()["state"] == "running"
        wait_for(lambda: http.get(f"/api/v1/rollouts/{rid}").json()["state"] == "completed")
        assert sum(a.installs["fmnist-1"] for a in agents) == 2
    finally:
        for a in agents:
            a.stop()


def test_offline_device_catches_up_when_it_returns(fleet) -> None:  # type: ignore[no-untyped-def]
    live, http = fleet
    agents = _agents(live, 4)
    try:
        _online(http, 4)
        late = agents[3]
        late.stop(clean=False)
        _online(http, 3)
        rid = http.post(
            "/api/v1/rollouts",
            json={
                "bundle_id": "fmnist-1",
                "target": {"all": True},
                "waves": [50, 100],
                "options": {"success_threshold": 0.5},
            },
        ).json()["id"]
        status = wait_for(
            lambda: (s := http.get(f"/api/v1/rollouts/{rid}").json())["state"] == "completed" and s
        )
        pending = [d for d in status["devices"] if d["state"] == "pending"]
        assert [d["device_id"] for d in pending] == [late.device_id]
        back = SimAgent(
            late.device_id,
            live.controller.settings.mqtt.port,
            late.public_key and public_pem(late.public_key),
        ).start()
        agents[3] = back
        wait_for(
            lambda: (
                {d["state"] for d in http.get(f"/api/v1/rollouts/{rid}").json()["devices"]}
                == {"healthy"}
            ),
            what="the returning device deployed",
        )
        assert back.installs["fmnist-1"] == 1
    finally:
        for a in agents:
            if not a._stop.is_set():
                a.stop()
