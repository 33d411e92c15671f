"""The agent against a real mosquitto: birth, telemetry order across a broker restart,
persistent sessions, and commands (deploy, rollback, dedupe, bad payloads)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.agent.config import AgentSettings
from lepton_edge.agent.outbox import Outbox
from lepton_edge.agent.service import Agent
from lepton_edge.shared.messages import Deploy, EventKind, Rollback, encode
from lepton_edge.shared.signing import generate_key
from lepton_edge.shared.topics import Kind, topic
from tests.agent.agent_support import ArtifactServer, Watcher, ladder_for, make_bundle, write_key
from tests.mosquitto import Mosquitto, free_port

KEY = generate_key()


def settings(tmp_path: Path, broker: Mosquitto, device_id: str, **extra: Any) -> AgentSettings:
    mqtt = {"port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}
    mqtt.update(extra.pop("mqtt", {}))
    return AgentSettings(
        device_id=device_id,
        state_dir=tmp_path / device_id,
        controller_key_file=write_key(tmp_path / "controller.pem", KEY),
        telemetry_interval_s=extra.pop("telemetry_interval_s", 0.1),
        mqtt=mqtt,
        probes={"sysfs_root": tmp_path / "no-sysfs"},
        **extra,
    )


@pytest.fixture
def mosquitto(mosquitto_factory: Any) -> Mosquitto:
    """The fixture's broker, but able to write its persistence file and log when run as root
    (mosquitto otherwise drops to user `mosquitto`, which cannot write the 0700 temp dir, and
    silently loses every persistent session on restart)."""
    broker: Mosquitto = mosquitto_factory("user root")
    return broker


@pytest.fixture
def watcher(mosquitto: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(mosquitto.port)
    yield w
    w.close()


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as srv:
        yield srv


def seqs(w: Watcher, device_id: str) -> list[int]:
    return [m["seq"] for m in w.json(f"/{device_id}/telemetry")]


def test_birth_telemetry_and_clean_stop(
    tmp_path: Path, mosquitto: Mosquitto, watcher: Watcher
) -> None:
    agent = Agent(settings(tmp_path, mosquitto, "d1"))
    agent.start()
    try:
        assert agent.wait_ready(10)
        birth = watcher.wait_json("/d1/state", lambda m: m["status"] == "online")
        assert birth["hardware"]["cores"] >= 1 and birth["agent_version"]
        watcher.wait_json("/d1/telemetry", lambda m: m["seq"] >= 3)
    finally:
        agent.stop()
    last = watcher.json("/d1/telemetry")[-1]
    assert last["battery"] is None if "battery" in last else True  # absent, not 0 %
    assert "gpu" not in last  # no GPU here: left out (null), never 0 %
    offline = watcher.wait_json("/d1/state", lambda m: m["status"] == "offline")
    assert offline["ts"] >= last["ts"]  # published by the agent at stop, not the stale will
    assert seqs(watcher, "d1") == list(range(len(seqs(watcher, "d1"))))

    # an independent subscriber arriving later sees the retained state
    late = Watcher(mosquitto.port, topic("d1", Kind.STATE))
    try:
        assert late.wait_for(lambda msgs: bool(msgs), 5)
        _topic, payload, retained = late.messages[0]
        assert retained and json.loads(payload)["status"] == "offline"
    finally:
        late.close()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_restart_mid_stream_no_gaps(
    tmp_path: Path, mosquitto: Mosquitto, protocol: str
) -> None:
    # The controller side keeps a persistent session so it misses nothing while the broker is down.
    ctl = Watcher(mosquitto.port, "lepton/v1/dev/+/telemetry", client_id="ctl", persistent=True)
    agent = Agent(settings(tmp_path, mosquitto, "d2", mqtt={"protocol": protocol}))
    agent.start()
    try:
        ctl.wait_json("/d2/telemetry", lambda m: m["seq"] >= 5)
        mosquitto.stop()
        time.sleep(1.5)  # ~15 samples go to the outbox
        queued = len(agent.outbox)
        assert queued >= 5
        mosquitto.start()
        target = agent.outbox.next_seq("telemetry") + 5
        ctl.wait_json("/d2/telemetry", lambda m: m["seq"] >= target, timeout=30)
    finally:
        agent.stop()
        ctl.close()
    got = seqs(ctl, "d2")
    first_seen = list(dict.fromkeys(got))
    assert first_seen == list(range(len(first_seen))), "gap or reordering"
    assert len(first_seen) > target
    assert all(m.get("dropped", 0) == 0 for m in ctl.json("/d2/telemetry"))
    assert {m["epoch"] for m in ctl.json("/d2/telemetry")} == {agent.outbox.epoch}


def deploy_command(server: ArtifactServer, manifest: Any, command_id: str) -> Deploy:
    return Deploy(
        command_id=command_id,
        ts=time.time(),
        bundle_id=manifest.bundle_id,
        manifest_url=server.manifest_url(manifest.bundle_id),
        artifact_base_url=server.artifact_base,
        ladder=ladder_for(manifest),
    )


def test_commands_deploy_dedupe_rollback_and_bad_payloads(
    tmp_path: Path, mosquitto: Mosquitto, watcher: Watcher, server: ArtifactServer
) -> None:
    s = settings(tmp_path, mosquitto, "d3", telemetry_interval_s=0.5)
    for name in ("b1", "b2", "evil"):
        make_bundle(tmp_path / name, KEY, name, {"onnx-fp32": os.urandom(4000)})
    m1, m2, evil = (server.add_bundle(tmp_path / n) for n in ("b1", "b2", "evil"))
    server.faults.replace[evil.variants[0].sha256] = os.urandom(4000)
    cmd_topic = topic("d3", Kind.CMD)
    agent = Agent(s)
    agent.start()
    try:
        assert agent.wait_ready(10)
        watcher.wait_json("/d3/state", lambda m: m["status"] == "online")

        def send(payload: bytes) -> None:
            watcher.publish(cmd_topic, payload)

        def reply(cid: str, status: str) -> dict[str, Any]:
            return watcher.wait_json(
                "/d3/reply", lambda m: m["command_id"] == cid and m["status"] == status
            )

        send(encode(deploy_command(server, m1, "c1")))
        assert "b1 active" in reply("c1", "done")["detail"]
        stages = [
            e["data"]["stage"] for e in watcher.json("/d3/event") if e.get("command_id") == "c1"
        ]
        assert stages == ["downloading", "verified", "activated"]
        watcher.wait_json("/d3/state", lambda m: m.get("active_bundle") == "b1")
        watcher.wait_json("/d3/telemetry", lambda m: m.get("active_bundle") == "b1")

        send(encode(deploy_command(server, m1, "c1")))  # redelivered: the same final reply
        watcher.wait_for(
            lambda _m: sum(r["command_id"] == "c1" for r in watcher.json("/d3/reply")) == 3
        )
        c1 = [r for r in watcher.json("/d3/reply") if r["command_id"] == "c1"]
        assert [r["status"] for r in c1] == ["accepted", "done", "done"] and c1[1] == c1[2]
        assert agent.store.current().bundle_id == "b1"  # type: ignore[union-attr]

        send(encode(deploy_command(server, m2, "c2")))
        reply("c2", "done")
        send(encode(deploy_command(server, evil, "c3")))
        failed = watcher.wait_json(
            "/d3/event", lambda m: m.get("command_id") == "c3" and m["data"]["stage"] == "failed"
        )
        assert "sha256" in failed["reason"] and "still serving b2" in failed["reason"]
        reply("c3", "failed")
        assert agent.store.current().bundle_id == "b2"  # type: ignore[union-attr]

        # A rollback of a bundle it does not serve, or to one it did not run before: refused.
        send(encode(Rollback(command_id="r1", ts=time.time(), from_bundle="b1")))
        assert "not serving b1 (serving b2)" in reply("r1", "rejected")["detail"]
        send(encode(Rollback(command_id="r2", ts=time.time(), from_bundle="b2", to_bundle="b0")))
        assert "is b1, not b0" in reply("r2", "rejected")["detail"]
        send(
            encode(
                Rollback(
                    command_id="c4",
                    ts=time.time(),
                    reason="canary unhealthy",
                    from_bundle="b2",
                    to_bundle="b1",
                )
            )
        )
        rolled = watcher.wait_json("/d3/event", lambda m: m["kind"] == "rollback")
        assert rolled["reason"] == "rolled back from b2 to b1: canary unhealthy"
        reply("c4", "done")
        watcher.wait_json("/d3/state", lambda m: m.get("active_bundle") == "b1")

        # bad input: each gets an ERROR event saying why, and nothing breaks
        send(b"{not json")
        send(json.dumps({"type": "reboot", "command_id": "c5", "ts": 1}).encode())
        send(b"{" + b" " * (300 * 1024) + b"}")
        send(json.dumps({"type": "deploy", "command_id": "c6", "ts": 1}).encode())
        watcher.wait_for(
            lambda msgs: sum(t.endswith("/d3/event") and b'"error"' in p for t, p, _ in msgs) >= 4
        )
        errors = [e["reason"] for e in watcher.json("/d3/event") if e["kind"] == "error"]
        assert any("not JSON" in r for r in errors)
        assert any("unknown command type 'reboot'" in r for r in errors)
        assert any("exceeds" in r for r in errors)
        assert any("c6" in r and "bundle_id" in r for r in errors)
        assert "unknown command type" in reply("c5", "rejected")["detail"]
        reply("c6", "rejected")
        # still alive and serving
        n = len(seqs(watcher, "d3"))
        watcher.wait_for(lambda _m: len(seqs(watcher, "d3")) > n + 1)
        assert agent.active is not None and agent.active.bundle_id == "b1"
    finally:
        agent.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_command_sent_while_offline_arrives_later(
    tmp_path: Path, mosquitto: Mosquitto, watcher: Watcher, server: ArtifactServer, protocol: str
) -> None:
    s = settings(tmp_path, mosquitto, "d4", telemetry_interval_s=1.0, mqtt={"protocol": protocol})
    make_bundle(tmp_path / "b1", KEY, "b1", {"onnx-fp32": os.urandom(1000)})
    m1 = server.add_bundle(tmp_path / "b1")
    agent = Agent(s)
    agent.start()
    assert agent.wait_ready(10)
    watcher.wait_json("/d4/state", lambda m: m["status"] == "online")
    agent.stop()
    watcher.publish(topic("d4", Kind.CMD), encode(deploy_command(server, m1, "late")))
    agent = Agent(s)
    agent.start()
    try:
        watcher.wait_json(
            "/d4/reply", lambda m: m["command_id"] == "late" and m["status"] == "done"
        )
    finally:
        agent.stop()


def test_offline_queue_is_bounded_and_reports_drops(tmp_path: Path) -> None:
    """Broker unreachable: the outbox stays at its bound and telemetry counts what it dropped."""
    s = AgentSettings(
        device_id="d5",
        state_dir=tmp_path / "d5",
        telemetry_interval_s=0.02,
        outbox={"max_messages": 10},
        mqtt={"port": free_port(), "reconnect_min_s": 0.1, "reconnect_max_s": 0.2},
        probes={"sysfs_root": tmp_path},
    )
    agent = Agent(s)
    agent.start()
    agent.emit_event(EventKind.ERROR, "an event outlives older telemetry")
    try:
        deadline = time.monotonic() + 20
        while agent.outbox.next_seq("telemetry") < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        agent.stop(flush_timeout=0.5)
    box = Outbox(s.state_dir, 10)
    rows = box.peek(limit=100)
    assert len(rows) == 10
    assert rows[0].kind == "event"
    last = json.loads(rows[-1].payload)
    assert last["dropped"] >= 25  # the count as of that sample
    assert box.dropped >= last["dropped"]


def test_bad_deploys_are_refused_with_reason_and_current_kept(
    tmp_path: Path, mosquitto: Mosquitto, watcher: Watcher, server: ArtifactServer
) -> None:
    """Bad signature, 404, stall, full disk: a failed event says why; b1 keeps being served."""
    s = settings(
        tmp_path,
        mosquitto,
        "d6",
        telemetry_interval_s=0.5,
        store={"http_timeout_s": 0.5, "download_attempts": 1},
    )
    names = ("b1", "unsigned", "gone", "stall", "big")
    for name in names:
        make_bundle(tmp_path / name, KEY, name, {"onnx-fp32": os.urandom(5000)})
    manifests = {n: server.add_bundle(tmp_path / n) for n in names}
    forged = tmp_path / "unsigned" / "manifest.json"
    forged.write_text(forged.read_text().replace('"model_name":"test"', '"model_name":"evil"'))
    del server.files[manifests["gone"].variants[0].sha256]
    server.faults.stall.add(manifests["stall"].variants[0].sha256)
    agent = Agent(s)
    agent.start()
    try:
        watcher.wait_json("/d6/state", lambda m: m["status"] == "online")
        cmd = topic("d6", Kind.CMD)
        watcher.publish(cmd, encode(deploy_command(server, manifests["b1"], "ok")))
        watcher.wait_json("/d6/reply", lambda m: m["command_id"] == "ok" and m["status"] == "done")
        expected = {
            "unsigned": "signature does not match",
            "gone": "HTTP 404",
            "stall": "stalled",
            "big": "not enough disk space",
        }
        for name, why in expected.items():
            if name == "big":
                agent.store.settings = agent.store.settings.model_copy(
                    update={"min_free_mb": 10**9}
                )
            watcher.publish(cmd, encode(deploy_command(server, manifests[name], name)))
            event = watcher.wait_json(
                "/d6/event",
                lambda m, n=name: m.get("command_id") == n and m["data"].get("stage") == "failed",
            )
            assert why in event["reason"] and "still serving b1" in event["reason"], event
            watcher.wait_json(
                "/d6/reply", lambda m, n=name: m["command_id"] == n and m["status"] == "failed"
            )
        assert agent.store.current().bundle_id == "b1"  # type: ignore[union-attr]
        assert [d.name.split("-")[0] for d in agent.store.bundles.iterdir()] == ["b1"]
        assert not list(agent.store.staging.iterdir())
    finally:
        agent.stop()


def test_username_password_and_refusal_reason(tmp_path: Path, mosquitto_factory: Any) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "d7", "s3cret"], check=True)
    pw.chmod(0o644)
    port = free_port()
    broker = mosquitto_factory(
        f"user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}", port
    )
    wrong = Agent(settings(tmp_path, broker, "d7", mqtt={"username": "d7", "password": "nope"}))
    wrong.start()
    try:
        deadline = time.monotonic() + 10
        while not wrong.link.last_error and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "refused" in (wrong.link.last_error or "")
        assert not wrong.ready.is_set()
    finally:
        wrong.stop(flush_timeout=0.5)
    right = Agent(settings(tmp_path, broker, "d7", mqtt={"username": "d7", "password": "s3cret"}))
    right.start()
    try:
        assert right.wait_ready(10)
    finally:
        right.stop()
