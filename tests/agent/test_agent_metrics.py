"""`metrics_port`: a box scraped directly by Prometheus. A real agent (in process) with a real
mosquitto and a deployed bundle; its /metrics read with the official parser and promtool."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lepton_edge.agent.config import AgentSettings
from lepton_edge.agent.service import build_agent
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.topics import Kind, topic
from tests.agent.agent_support import ArtifactServer, Watcher, write_key
from tests.agent.test_agent_inference import KEY, MODEL, deploy, onnx_bundle, server  # noqa: F401
from tests.mosquitto import Mosquitto


def settings(tmp_path: Path, broker: Mosquitto, port: int) -> AgentSettings:
    return AgentSettings(
        device_id="box-1",
        state_dir=tmp_path / "state",
        controller_key_file=write_key(tmp_path / "controller.pem", KEY),
        telemetry_interval_s=0.3,
        metrics_port=port,
        mqtt={"port": broker.port, "reconnect_min_s": 0.1},
        probes={"sysfs_root": tmp_path / "no-sysfs", "battery": "simulated"},
        simulate={"battery": {"start_percent": 70}},
        engine={"source": "synthetic", "fps": 50, "threads": 1},
    )


def scrape(port: int) -> tuple[str, dict[str, float], dict[str, str]]:
    """The exposition text, every unlabelled sample's value, and the info series' labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    info: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "lepton_agent_info":
                info = dict(sample.labels)
            else:
                values[sample.name] = sample.value
    return text, values, info


@pytest.mark.slow
def test_a_box_scraped_directly(
    tmp_path: Path,
    mosquitto: Mosquitto,
    server: ArtifactServer,  # noqa: F811
) -> None:
    onnx_bundle(tmp_path / "bundle", "fm", MODEL.read_bytes())
    server.add_bundle(tmp_path / "bundle")
    agent = build_agent(settings(tmp_path, mosquitto, 0))
    w = Watcher(mosquitto.port)
    agent.start()
    try:
        port = agent._metrics_server.server_port
        w.wait_json("/state", lambda m: m["status"] == "online")
        w.publish(topic("box-1", Kind.CMD), deploy(server, "fm", "c1"))
        last = w.wait_json(
            "/telemetry", lambda m: (m.get("inference") or {}).get("frames", 0) > 0, 30
        )
        deadline = time.monotonic() + 10
        while not (scraped := scrape(port))[1].get("lepton_agent_inference_frames_total"):
            assert time.monotonic() < deadline, "no frames in /metrics"
            time.sleep(0.2)
        text, values, info = scraped
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert info == {
            "device_id": "box-1",
            "bundle": "fm",
            "variant": "onnx-fp32",
            "precision": "fp32",
            "power_level": last["power_level"],
        }
        assert 0 < values["lepton_agent_battery_percent"] <= 70
        assert 0 <= values["lepton_agent_cpu_percent"] <= 100
        assert values["lepton_agent_inference_latency_p99_seconds"] > 0
        assert values["lepton_agent_inference_errors_total"] == 0
        assert "lepton_agent_temperature_celsius" not in values  # no thermal zone: no series
    finally:
        agent.stop()
        w.close()
    with pytest.raises(OSError):  # the port is closed with the agent
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_a_metrics_port_in_use_is_one_line(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        agent = build_agent(settings(tmp_path, mosquitto, busy))
        with pytest.raises(
            UserError, match=f"metrics_port {busy} on 127.0.0.1: .*choose a free port"
        ):
            agent.start()
