"""`/metrics` in Prometheus text format and `/healthz`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select, text

from lepton_edge.controller import fleet
from lepton_edge.controller.api.deps import ControllerDep
from lepton_edge.controller.tables import Rollout, RolloutDevice

router = APIRouter(tags=["observability"])


def _esc(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_: str, samples: list[tuple[dict[str, Any], float]]
    ) -> None:
        self.lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            self.lines.append(
                f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}"
            )


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(controller: ControllerDep) -> PlainTextResponse:
    out = _Text()
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
    out.metric("lepton_devices", "gauge", "devices known", [({}, c["total"])])
    out.metric("lepton_devices_online", "gauge", "devices online", [({}, c["online"])])
    out.metric(
        "lepton_devices_online_by_variant",
        "gauge",
        "online devices per active variant",
        [
            ({"variant": k or "none"}, v)
            for k, v in sorted(c["per_variant"].items(), key=lambda kv: str(kv[0]))
        ],
    )
    out.metric(
        "lepton_devices_online_by_power_level",
        "gauge",
        "online devices per power level",
        [
            ({"level": k or "none"}, v)
            for k, v in sorted(c["per_level"].items(), key=lambda kv: str(kv[0]))
        ],
    )
    out.metric(
        "lepton_telemetry_gaps_total",
        "counter",
        "telemetry samples lost (seq gaps)",
        [({}, c["gaps"])],
    )
    out.metric(
        "lepton_telemetry_duplicates_total",
        "counter",
        "telemetry samples seen twice",
        [({}, c["duplicates"])],
    )
    out.metric(
        "lepton_telemetry_resets_total",
        "counter",
        "device sequences started again (new epoch)",
        [({}, c["resets"])],
    )
    out.metric(
        "lepton_telemetry_suspect_total",
        "counter",
        "telemetry samples whose seq jumped too far ahead",
        [({}, c["suspect"])],
    )
    out.metric(
        "lepton_rollouts",
        "gauge",
        "rollouts by state",
        [({"state": s}, rollouts.get(s, 0)) for s in ("running", "paused", "completed", "aborted")],
    )
    out.metric(
        "lepton_rollout_devices",
        "gauge",
        "devices in rollouts by state",
        [({"state": k}, v) for k, v in sorted(rollout_devices.items())],
    )
    bridge = controller.bridge
    if bridge is not None:
        counters = bridge.counters
        out.metric(
            "lepton_mqtt_connected",
            "gauge",
            "1 if the bridge is connected",
            [({}, int(bridge.connected.is_set()))],
        )
        out.metric(
            "lepton_mqtt_messages_received_total",
            "counter",
            "MQTT messages received",
            [({}, counters.received)],
        )
        out.metric(
            "lepton_telemetry_ingested_total",
            "counter",
            "telemetry samples stored",
            [({}, counters.telemetry)],
        )
        out.metric(
            "lepton_telemetry_rate",
            "gauge",
            "telemetry samples per second (last minute)",
            [({}, round(bridge.telemetry_rate(), 3))],
        )
        out.metric(
            "lepton_mqtt_rejected_total",
            "counter",
            "payloads dropped, by reason",
            [
                ({"reason": "malformed"}, counters.rejected_malformed),
                ({"reason": "oversized"}, counters.rejected_oversized),
                ({"reason": "wrong_topic"}, counters.rejected_topic),
                ({"reason": "unknown_device"}, counters.rejected_unknown),
                ({"reason": "results_queue_full"}, counters.dropped_queue_full),
            ],
        )
        out.metric(
            "lepton_ingest_failed_total",
            "counter",
            "messages that could not be written even one by one, by reason",
            [({"reason": r}, n) for r, n in sorted(bridge.failures.items())]
            or [({"reason": "none"}, 0)],
        )
        out.metric(
            "lepton_ingest_backlog",
            "gauge",
            "messages waiting to be written",
            [({}, bridge.backlog())],
        )
        out.metric(
            "lepton_commands_published_total",
            "counter",
            "commands published",
            [({}, counters.commands_published)],
        )
    out.metric(
        "lepton_leader",
        "gauge",
        "1 if this controller runs the rollout loop",
        [({}, int(controller.leader.is_leader()))],
    )
    return PlainTextResponse("\n".join(out.lines) + "\n", media_type="text/plain; version=0.0.4")


@router.get("/healthz")
def healthz(controller: ControllerDep) -> dict[str, Any]:
    """200 when the database answers; says whether the broker link is up."""
    with controller.db.session() as session:
        session.execute(text("SELECT 1"))
    bridge = controller.bridge
    return {
        "status": "ok",
        "database": controller.db.engine.dialect.name,
        "mqtt": None if bridge is None else bridge.connected.is_set(),
        "leader": controller.leader.is_leader(),
    }
