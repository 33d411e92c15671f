"""`lepton-agent run` as a real process: systemd notify, the will on SIGKILL, a clean SIGTERM,
and SIGKILL at every step of a download and an activation: it always comes back on a
verified bundle."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.agent.config import StoreSettings
from lepton_edge.agent.store import ArtifactStore, sha256_file
from lepton_edge.shared.messages import Deploy, encode
from lepton_edge.shared.signing import generate_key
from lepton_edge.shared.topics import Kind, topic
from tests.agent.agent_support import (
    ArtifactServer,
    Watcher,
    ladder_for,
    make_bundle,
    start_agent_process,
    stop_process,
    write_key,
)
from tests.mosquitto import Mosquitto

KEY = generate_key()
pytestmark = pytest.mark.slow


@pytest.fixture
def broker(mosquitto_factory: Any) -> Mosquitto:
    b: Mosquitto = mosquitto_factory("user root")  # see test_agent_mqtt.mosquitto
    return b


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as srv:
        yield srv


@pytest.fixture
def watcher(broker: Mosquitto) -> Iterator[Watcher]:
    w = Watcher(broker.port)
    yield w
    w.close()


def config(tmp_path: Path, broker: Mosquitto, device_id: str) -> Path:
    key = write_key(tmp_path / "controller.pem", KEY)
    path = tmp_path / f"{device_id}.toml"
    path.write_text(
        f'device_id = "{device_id}"\nstate_dir = "{tmp_path / device_id}"\n'
        f'controller_key_file = "{key}"\ntelemetry_interval_s = 0.2\n'
        f"[mqtt]\nport = {broker.port}\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"
        f"[store]\nhttp_timeout_s = 30\ndownload_attempts = 1\n"
        f'[probes]\nsysfs_root = "{tmp_path / "no-sysfs"}"\n'
    )
    return path


def deploy(server: ArtifactServer, manifest: Any, command_id: str) -> bytes:
    return encode(
        Deploy(
            command_id=command_id,
            ts=time.time(),
            bundle_id=manifest.bundle_id,
            manifest_url=server.manifest_url(manifest.bundle_id),
            artifact_base_url=server.artifact_base,
            ladder=ladder_for(manifest),
        )
    )


def online_births(w: Watcher, device_id: str) -> list[dict[str, Any]]:
    return [m for m in w.json(f"/{device_id}/state") if m["status"] == "online"]


def wait_birth(w: Watcher, device_id: str, after: int) -> dict[str, Any]:
    w.wait_for(lambda _m: len(online_births(w, device_id)) > after, 20)
    births = online_births(w, device_id)
    assert len(births) > after, "agent did not come back online"
    return births[-1]


def test_notify_watchdog_will_on_sigkill(
    tmp_path: Path, broker: Mosquitto, watcher: Watcher
) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    proc = start_agent_process(
        config(tmp_path, broker, "p1"),
        env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"},
    )
    try:
        seen: list[bytes] = []
        while not any(b"WATCHDOG=1" in m for m in seen) or not any(b"READY=1" in m for m in seen):
            seen.append(sock.recv(4096))
        ready = next(m for m in seen if b"READY=1" in m)
        assert b"STATUS=connected to 127.0.0.1" in ready
        watcher.wait_json("/p1/state", lambda m: m["status"] == "online")
        last = watcher.wait_json("/p1/telemetry", lambda m: m["seq"] >= 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        will = watcher.wait_json("/p1/state", lambda m: m["status"] == "offline")
        assert will["ts"] < last["ts"]  # made at connect time: the broker sent the will
    finally:
        stop_process(proc)
        sock.close()
    late = Watcher(broker.port, topic("p1", Kind.STATE))
    try:
        assert late.wait_for(lambda m: bool(m), 5)
        assert late.messages[0][2] is True and b'"offline"' in late.messages[0][1]
    finally:
        late.close()


def test_sigterm_flushes_and_publishes_offline(
    tmp_path: Path, broker: Mosquitto, watcher: Watcher
) -> None:
    proc = start_agent_process(config(tmp_path, broker, "p2"))
    try:
        watcher.wait_json("/p2/telemetry", lambda m: m["seq"] >= 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        stop_process(proc)
    offline = watcher.wait_json("/p2/state", lambda m: m["status"] == "offline")
    telemetry = watcher.json("/p2/telemetry")
    assert offline["ts"] >= telemetry[-1]["ts"]  # our own offline, after the last sample
    seqs = [m["seq"] for m in telemetry]
    assert seqs == list(range(len(seqs)))


def seed_bundle(tmp_path: Path, server: ArtifactServer, device_id: str) -> Any:
    """Put a verified, active bundle b1 in the agent's state dir (as a past deploy would)."""
    make_bundle(tmp_path / "b1", KEY, "b1", {"onnx-fp32": os.urandom(20_000)})
    m1 = server.add_bundle(tmp_path / "b1")
    store = ArtifactStore(tmp_path / device_id, KEY.public_key(), StoreSettings(min_free_mb=0))
    ladder = ladder_for(m1)
    store.activate(store.fetch("b1", server.manifest_url("b1"), server.artifact_base, [], ladder))
    return m1


def assert_serves_verified(tmp_path: Path, device_id: str, bundle_id: str) -> None:
    store = ArtifactStore(tmp_path / device_id, KEY.public_key(), StoreSettings())
    current = store.current()
    assert current is not None and current.bundle_id == bundle_id
    for variant_id in current.ladder.values():
        v = current.manifest.variant(variant_id)
        assert sha256_file(current.variant_path(variant_id)) == v.sha256


def test_sigkill_during_download_then_resume(
    tmp_path: Path, broker: Mosquitto, watcher: Watcher, server: ArtifactServer
) -> None:
    seed_bundle(tmp_path, server, "p3")
    make_bundle(tmp_path / "b2", KEY, "b2", {"onnx-fp32": os.urandom(200_000)})
    m2 = server.add_bundle(tmp_path / "b2")
    sha = m2.variants[0].sha256
    server.faults.stall.add(sha)
    cfg = config(tmp_path, broker, "p3")
    proc = start_agent_process(cfg)
    try:
        assert wait_birth(watcher, "p3", 0)["active_bundle"] == "b1"
        watcher.publish(topic("p3", Kind.CMD), deploy(server, m2, "d-stall"))
        deadline = time.monotonic() + 20
        while not server.ranges(sha) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let the first 1 KiB land in the partial file
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_process(proc)
    assert_serves_verified(tmp_path, "p3", "b1")

    server.faults.stall.clear()
    proc = start_agent_process(cfg)
    try:
        assert wait_birth(watcher, "p3", 1)["active_bundle"] == "b1"  # came back on b1
        # the controller resends the same command: it was interrupted, so it runs (not a dup)
        watcher.publish(topic("p3", Kind.CMD), deploy(server, m2, "d-stall"))
        watcher.wait_json(
            "/p3/reply", lambda m: m["command_id"] == "d-stall" and m["status"] == "done"
        )
    finally:
        stop_process(proc)
    assert server.ranges(sha) == [None, "bytes=1024-"]  # resumed where the killed one stopped
    assert_serves_verified(tmp_path, "p3", "b2")


@pytest.mark.parametrize(
    ("failpoint", "survivor"),
    [
        ("download:after-first-chunk", "b1"),
        ("activate:staged", "b1"),
        ("activate:renamed", "b1"),
        ("activate:previous-swapped", "b1"),
        ("activate:current-swapped", "b2"),
    ],
)
def test_sigkill_during_activation_serves_verified_bundle(
    tmp_path: Path,
    broker: Mosquitto,
    watcher: Watcher,
    server: ArtifactServer,
    failpoint: str,
    survivor: str,
) -> None:
    seed_bundle(tmp_path, server, "p4")
    make_bundle(tmp_path / "b2", KEY, "b2", {"onnx-fp32": os.urandom(100_000)})
    m2 = server.add_bundle(tmp_path / "b2")
    cfg = config(tmp_path, broker, "p4")
    proc = start_agent_process(cfg, env={"LEPTON_AGENT_FAILPOINT": failpoint})
    try:
        wait_birth(watcher, "p4", 0)
        watcher.publish(topic("p4", Kind.CMD), deploy(server, m2, "d1"))
        assert proc.wait(30) == -signal.SIGKILL  # it died at the failpoint
    finally:
        stop_process(proc)
    assert_serves_verified(tmp_path, "p4", survivor)
    proc = start_agent_process(cfg)
    try:
        birth = wait_birth(watcher, "p4", 1)
        assert birth["active_bundle"] == survivor
    finally:
        stop_process(proc)
    assert not list((tmp_path / "p4" / "staging").iterdir())  # half-built bundles wiped
    assert_serves_verified(tmp_path, "p4", survivor)


def test_agent_without_bundle_or_broker_still_runs(tmp_path: Path) -> None:
    """Unreachable broker: telemetry is queued on disk, SIGTERM still exits 0."""
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        f'device_id = "p5"\nstate_dir = "{tmp_path / "p5"}"\ntelemetry_interval_s = 0.1\n'
        "[mqtt]\nport = 1\nreconnect_min_s = 0.1\nreconnect_max_s = 0.2\n"
    )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    proc = start_agent_process(cfg, env=env, log_file=tmp_path / "agent.log")
    try:
        status = sock.recv(4096).decode()  # systemctl status shows why it is offline
        assert status.startswith("STATUS=cannot connect to 127.0.0.1:1") and "queued" in status
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        stop_process(proc)
        sock.close()
    with sqlite3.connect(tmp_path / "p5" / "agent.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM outbox WHERE kind='telemetry'").fetchone()
    assert count >= 5
    assert "Traceback" not in (tmp_path / "agent.log").read_text()
