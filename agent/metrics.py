"""Prometheus metrics of one box (`metrics_port` in agent.toml), for boxes scraped directly
rather than through the controller: the newest telemetry sample as gauges, frames and errors
as counters, and what runs as an info series.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from lepton_edge.shared.messages import Telemetry


class TelemetryCollector(Collector):
    """Holds the newest sample; Prometheus reads it at scrape time."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self._lock = threading.Lock()
        self._latest: Telemetry | None = None
        self._frames = 0
        self._errors = 0

    def update(self, sample: Telemetry) -> None:
        with self._lock:
            self._latest = sample
            if sample.inference is not None:
                self._frames += sample.inference.frames
                self._errors += sample.inference.errors

    def describe(self) -> list[Metric]:
        return []  # read at scrape time only

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            t, frames, errors = self._latest, self._frames, self._errors
        if t is None:
            return
        gauges: list[tuple[str, str, float | None]] = [
            ("lepton_agent_cpu_percent", "CPU use of the whole box", t.cpu.percent),
            ("lepton_agent_memory_percent", "memory in use", t.memory.percent),
            ("lepton_agent_battery_percent", "battery charge", _get(t.battery, "percent")),
            ("lepton_agent_temperature_celsius", "hottest thermal zone", _get(t.thermal, "max_c")),
            ("lepton_agent_inference_fps", "frames per second", _get(t.inference, "fps")),
            (
                "lepton_agent_inference_latency_p99_seconds",
                "99th percentile of one run over the last interval",
                _ms_to_s(_get(t.inference, "latency_p99_ms")),
            ),
        ]
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)
        yield CounterMetricFamily("lepton_agent_inference_frames", "frames run", value=frames)
        yield CounterMetricFamily(
            "lepton_agent_inference_errors", "frames that failed", value=errors
        )
        info = InfoMetricFamily("lepton_agent", "what this box runs")
        info.add_metric(
            [],
            {
                "device_id": self.device_id,
                "bundle": t.active_bundle or "",
                "variant": t.active_variant or "",
                "precision": _get(t.inference, "precision") or "",
                "power_level": t.power_level.value if t.power_level else "",
            },
        )
        yield info


def _get(part: Any, field: str) -> Any:
    return None if part is None else getattr(part, field)


def _ms_to_s(value: float | None) -> float | None:
    return None if value is None else value / 1000


def serve(collector: TelemetryCollector, host: str, port: int) -> Any:
    """Serve /metrics on `host:port` (0: any free port) in a thread; returns the server
    (`server_port`, `shutdown()`)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
