"""`/metrics` from a real controller (uvicorn, mosquitto, a simulated device) read the way
Prometheus reads it: `promtool check metrics`, the official parser, and the alert rules in
deploy/prometheus/ naming only series the controller exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.controller.conftest import AUTH, LiveController
from tests.controller.helpers import SimAgent, wait_for

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "lepton-rules.yml"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_pass_promtool_and_carry_histograms(live: LiveController) -> None:
    agent = SimAgent("cam-1", live.controller.settings.mqtt.port).start()
    device = {"device_id": "cam-1", "hardware_class": agent.hw.hardware_class()}
    clean_stop = True
    try:
        with httpx.Client(base_url=live.url, headers=AUTH, timeout=10) as http:
            wait_for(lambda: http.get("/api/v1/devices/cam-1").status_code == 200, what="cam-1")
            assert http.get("/api/v1/devices/nope").status_code == 404
            wait_for(
                lambda: _value(
                    _samples(http.get("/metrics").text), "lepton_ingest_batch_seconds_count"
                ),
                what="a telemetry batch written",
            )
            wait_for(
                lambda: _value(
                    _samples(http.get("/metrics").text), "lepton_ingest_lag_seconds_count"
                ),
                what="a sample's ingest lag observed",
            )
            text = http.get("/metrics").text
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        samples = _samples(text)
        count = "lepton_api_request_seconds_count"
        route = "/api/v1/devices/{device_id}"
        # one series per route template and status, never one per device id
        assert (_value(samples, count, method="GET", route=route, status="200") or 0) >= 1
        assert _value(samples, count, method="GET", route=route, status="404") == 1
        assert not any(name == count and "cam-1" in str(labels) for name, labels in samples)
        assert _value(samples, "lepton_device_online", **device) == 1
        assert _value(samples, "lepton_mqtt_connected") == 1
        assert (_value(samples, "process_cpu_seconds_total") or 0) > 0
        assert _value(samples, "lepton_rollout_wave_seconds_count") == 0

        clean_stop = False
        agent.stop(clean=False)  # the broker publishes the will: offline
        wait_for(
            lambda: (
                _value(
                    _samples(httpx.get(f"{live.url}/metrics").text),
                    "lepton_device_online",
                    **device,
                )
                == 0
            ),
            what="cam-1 offline in /metrics",
        )
    finally:
        if clean_stop:
            agent.stop()

    # Every series the alert rules use is one the controller exports.
    exported = {name for name, _ in samples}
    used = set(re.findall(r"\blepton_[a-z_]+", RULES.read_text())) - {"lepton_controller"}
    assert used and used <= exported, used - exported
