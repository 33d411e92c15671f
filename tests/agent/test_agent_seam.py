"""The agent <-> runner seam (the `Runner` protocol of agent.service) with a small recording
runner: what the agent hands over, when, and what it does when the runner refuses."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.agent.config import AgentSettings
from lepton_edge.agent.service import Agent, Runner, build_agent
from lepton_edge.shared.manifest import Manifest
from lepton_edge.shared.messages import (
    BatterySample,
    Benchmark,
    BenchmarkResult,
    Deploy,
    EventKind,
    InferenceStats,
    PowerLevel,
    SetPolicy,
    ThermalSample,
    encode,
)
from lepton_edge.shared.signing import generate_key
from lepton_edge.shared.topics import Kind, topic
from tests.agent.agent_support import ArtifactServer, Watcher, ladder_for, make_bundle, write_key
from tests.mosquitto import Mosquitto

KEY = generate_key()


class RecordingRunner:
    """Implements the protocol; refuses bundles named `refuse`; infers nothing."""

    def __init__(self) -> None:
        self.activated: list[str] = []
        self.powers: list[tuple[BatterySample | None, ThermalSample | None]] = []
        self.policies: list[SetPolicy] = []
        self.ladder: dict[PowerLevel, str] = {}
        self.closed = False
        self.cpu = 0.0
        self.emit: Any = None

    def activate(self, bundle_dir: Path, manifest: Manifest, ladder: dict[PowerLevel, str]) -> None:
        assert (bundle_dir / "manifest.json").is_file()
        if manifest.bundle_id == "refuse":
            raise RuntimeError("model does not load")
        self.activated.append(manifest.bundle_id)
        self.ladder = ladder

    def stats(self) -> InferenceStats | None:
        return InferenceStats(variant=self.active_variant(), frames=7, fps=7.0)

    def power_level(self) -> PowerLevel | None:
        return PowerLevel.SAVER if self.ladder else None

    def active_variant(self) -> str | None:
        return self.ladder.get(PowerLevel.SAVER)

    def update_power(self, battery: BatterySample | None, thermal: ThermalSample | None) -> None:
        self.powers.append((battery, thermal))
        if battery is not None and battery.percent < 99.9 and self.emit:
            data = {"from_variant": "onnx-fp32", "to_variant": "onnx-int8", "to_level": "saver"}
            self.emit(EventKind.PRECISION_SWITCH, "battery low", data)
            self.emit = None

    def set_policy(self, command: SetPolicy) -> None:
        self.policies.append(command)

    def benchmark(
        self, bundle_dir: Path, manifest: Manifest, variant_ids: list[str], iterations: int
    ) -> dict[str, Any]:
        return {v: {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0} for v in variant_ids}

    def cpu_seconds(self) -> float:
        self.cpu += 0.5  # half a core busy inferring, as far as the battery model knows
        return self.cpu

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as srv:
        yield srv


def agent_settings(tmp_path: Path, broker: Mosquitto, **extra: Any) -> AgentSettings:
    return AgentSettings(
        device_id="seam",
        state_dir=tmp_path / "state",
        controller_key_file=write_key(tmp_path / "controller.pem", KEY),
        telemetry_interval_s=0.1,
        mqtt={"port": broker.port, "reconnect_min_s": 0.1},
        probes={"sysfs_root": tmp_path / "no-sysfs"},
        **extra,
    )


def command(server: ArtifactServer, manifest: Manifest, cid: str) -> bytes:
    return encode(
        Deploy(
            command_id=cid,
            ts=time.time(),
            bundle_id=manifest.bundle_id,
            manifest_url=server.manifest_url(manifest.bundle_id),
            artifact_base_url=server.artifact_base,
            ladder=ladder_for(manifest),
        )
    )


def test_runner_seam(tmp_path: Path, mosquitto: Mosquitto, server: ArtifactServer) -> None:
    for name in ("good", "refuse"):
        make_bundle(
            tmp_path / name, KEY, name, {"onnx-fp32": os.urandom(500), "onnx-int8": os.urandom(300)}
        )
    good, refuse = server.add_bundle(tmp_path / "good"), server.add_bundle(tmp_path / "refuse")
    runner = RecordingRunner()
    assert isinstance(runner, Runner)
    s = agent_settings(tmp_path, mosquitto, simulate={"battery": {"time_scale": 3600}})
    agent = Agent(s, runner=runner)
    runner.emit = agent.emit_event
    w = Watcher(mosquitto.port)
    cmd = topic("seam", Kind.CMD)
    agent.start()
    try:
        w.wait_json("/state", lambda m: m["status"] == "online")  # subscribed by now
        w.publish(cmd, command(server, good, "c1"))
        w.wait_json("/reply", lambda m: m["command_id"] == "c1" and m["status"] == "done")
        assert runner.activated == ["good"]
        t = w.wait_json("/telemetry", lambda m: m.get("active_variant") == "onnx-int8")
        assert t["power_level"] == "saver" and t["inference"]["frames"] == 7
        assert t["battery"]["source"] == "simulated"
        # the battery model used the runner's CPU time: draw above idle
        assert t["battery"]["power_w"] > s.simulate.battery.idle_w  # type: ignore[union-attr]
        assert any(b is not None for b, _ in runner.powers)
        switch = w.wait_json("/event", lambda m: m["kind"] == "precision_switch")
        assert switch["reason"] == "battery low"

        w.publish(cmd, command(server, refuse, "c2"))
        r = w.wait_json("/reply", lambda m: m["command_id"] == "c2" and m["status"] == "failed")
        assert "refused" in r["detail"]
        assert agent.store.current().bundle_id == "good"  # type: ignore[union-attr]
        assert agent.active is not None and agent.active.bundle_id == "good"

        bench = Benchmark(
            command_id="c3",
            ts=time.time(),
            bundle_id="good",
            manifest_url=server.manifest_url("good"),
            artifact_base_url=server.artifact_base,
            variant_ids=["onnx-fp32", "onnx-int8"],
            iterations=5,
        )
        w.publish(cmd, encode(bench))
        r = w.wait_json("/reply", lambda m: m["command_id"] == "c3" and m["status"] == "done")
        result = BenchmarkResult.model_validate(r["result"])
        assert result.hardware_class == agent.profile.hardware_class()
        assert set(result.timings) == {"onnx-fp32", "onnx-int8"}
        assert agent.store.current().bundle_id == "good"  # type: ignore[union-attr]

        w.publish(cmd, encode(SetPolicy(command_id="c4", ts=time.time(), override="critical")))
        w.wait_json("/reply", lambda m: m["command_id"] == "c4" and m["status"] == "done")
        assert runner.policies[0].override == PowerLevel.CRITICAL
        w.wait_json("/event", lambda m: m["kind"] == "policy")
    finally:
        agent.stop()
        w.close()
    assert runner.closed

    # restart: the runner is handed the bundle the store comes up on
    again = RecordingRunner()
    agent = Agent(s, runner=again)
    agent.start()
    try:
        assert again.activated == ["good"]
    finally:
        agent.stop()


def test_without_runner_benchmark_and_policy_fail_with_reason(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    agent = build_agent(agent_settings(tmp_path, mosquitto))  # engine.source = none
    assert agent.runner is None
    w = Watcher(mosquitto.port)
    agent.start()
    try:
        w.wait_json("/state", lambda m: m["status"] == "online")
        w.publish(topic("seam", Kind.CMD), encode(SetPolicy(command_id="p", ts=time.time())))
        r = w.wait_json("/reply", lambda m: m["command_id"] == "p")
        assert r["status"] == "failed" and "no inference engine" in r["detail"]
    finally:
        agent.stop()
        w.close()
