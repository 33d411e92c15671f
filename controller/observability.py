"""The controller's Prometheus metrics, built with `prometheus_client`.

One registry per controller (tests and the demo run several in one process). Histograms are fed
where the work happens (a batch written, a request served, a wave passed); the fleet's counts
are read from the database when Prometheus scrapes, so every replica reports the same fleet.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from lepton_edge.controller import fleet
from lepton_edge.controller.tables import Device, Rollout, RolloutDevice

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from lepton_edge.controller.core import Controller

CONTENT_TYPE = CONTENT_TYPE_LATEST
ROLLOUT_STATES = ("running", "paused", "completed", "aborted")


class Metrics:
    """The registry `/metrics` serves and the histograms the controller's parts observe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.ingest_batch_seconds = Histogram(
            "lepton_ingest_batch_seconds",
            "time to decode and commit one batch of MQTT messages",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.ingest_lag_seconds = Histogram(
            "lepton_ingest_lag_seconds",
            "from a telemetry sample's timestamp (the device's clock) to its commit: rises when "
            "ingestion falls behind and the broker queues",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.api_request_seconds = Histogram(
            "lepton_api_request_seconds",
            "time to answer an HTTP request, by route template, method and status",
            ["method", "route", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.rollout_wave_seconds = Histogram(
            "lepton_rollout_wave_seconds",
            "from a wave's release to its health gate passing (soak included)",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
            registry=self.registry,
        )

    def watch(self, controller: Controller) -> None:
        """Report the fleet, rollouts, bridge and leader of `controller` at scrape time."""
        self.registry.register(_FleetCollector(controller))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _FleetCollector(Collector):
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only: reading the database at registration is wrong

    def collect(self) -> Iterator[Metric]:
        controller = self.controller
        with controller.db.session() as session:
            c = fleet.counts(session)
            rollouts = dict(
                session.execute(select(Rollout.state, func.count()).group_by(Rollout.state)).all()
            )
            rollout_devices = dict(
                session.execute(
                    select(RolloutDevice.state, func.count()).group_by(RolloutDevice.state)
                ).all()
            )
            devices = session.execute(
                select(Device.id, Device.hardware_class, Device.online).order_by(Device.id)
            ).all()
        yield _gauge("lepton_devices", "devices known", c["total"])
        yield _gauge("lepton_devices_online", "devices online", c["online"])
        # One series per device (10,000 are cheap for Prometheus): what a per-device
        # "offline for 10 minutes" alert needs.
        online = GaugeMetricFamily(
            "lepton_device_online",
            "1 while the device is online (its retained state), 0 once it is offline",
            labels=["device_id", "hardware_class"],
        )
        for device_id, hardware_class, is_online in devices:
            online.add_metric([device_id, hardware_class or ""], int(bool(is_online)))
        yield online
        yield _gauge(
            "lepton_devices_online_by_variant",
            "online devices per active variant",
            labelled=("variant", {k or "none": v for k, v in c["per_variant"].items()}),
        )
        yield _gauge(
            "lepton_devices_online_by_power_level",
            "online devices per power level",
            labelled=("level", {k or "none": v for k, v in c["per_level"].items()}),
        )
        yield _counter("lepton_telemetry_gaps", "telemetry samples lost (seq gaps)", c["gaps"])
        yield _counter(
            "lepton_telemetry_duplicates", "telemetry samples seen twice", c["duplicates"]
        )
        yield _counter(
            "lepton_telemetry_resets", "device sequences started again (new epoch)", c["resets"]
        )
        yield _counter(
            "lepton_telemetry_suspect",
            "telemetry samples whose seq jumped too far ahead",
            c["suspect"],
        )
        yield _gauge(
            "lepton_rollouts",
            "rollouts by state",
            labelled=("state", {s: rollouts.get(s, 0) for s in ROLLOUT_STATES}),
        )
        yield _gauge(
            "lepton_rollout_devices",
            "devices in rollouts by state",
            labelled=("state", rollout_devices),
        )
        yield _gauge(
            "lepton_leader",
            "1 if this controller runs the rollout loop",
            int(controller.leader.is_leader()),
        )
        bridge = controller.bridge
        if bridge is None:
            return
        counters = bridge.counters
        yield _gauge(
            "lepton_mqtt_connected", "1 if the bridge is connected", int(bridge.connected.is_set())
        )
        yield _counter("lepton_mqtt_messages_received", "MQTT messages received", counters.received)
        yield _counter("lepton_telemetry_ingested", "telemetry samples stored", counters.telemetry)
        yield _gauge(
            "lepton_telemetry_rate",
            "telemetry samples per second (last minute)",
            round(bridge.telemetry_rate(), 3),
        )
        rejected = CounterMetricFamily(
            "lepton_mqtt_rejected", "payloads dropped, by reason", labels=["reason"]
        )
        for reason, count in (
            ("malformed", counters.rejected_malformed),
            ("oversized", counters.rejected_oversized),
            ("wrong_topic", counters.rejected_topic),
            ("unknown_device", counters.rejected_unknown),
            ("results_queue_full", counters.dropped_queue_full),
        ):
            rejected.add_metric([reason], count)
        yield rejected
        failed = CounterMetricFamily(
            "lepton_ingest_failed",
            "messages that could not be written even one by one, by reason",
            labels=["reason"],
        )
        for reason, count in sorted(bridge.failures.items()) or [("none", 0)]:
            failed.add_metric([reason], count)
        yield failed
        yield _gauge("lepton_ingest_backlog", "messages waiting to be written", bridge.backlog())
        yield _counter(
            "lepton_commands_published", "commands published", counters.commands_published
        )


def _gauge(
    name: str,
    documentation: str,
    value: float | None = None,
    *,
    labelled: tuple[str, dict[str, int]] | None = None,
) -> GaugeMetricFamily:
    if labelled is None:
        return GaugeMetricFamily(name, documentation, value=value)
    label, values = labelled
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, count in sorted(values.items(), key=lambda kv: str(kv[0])):
        family.add_metric([str(key)], count)
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
