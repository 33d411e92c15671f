"""`lepton-agent run`: build the agent from settings and run it until SIGTERM (systemd's
Type=notify: ready once connected, or after a while offline with telemetry queued)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from lepton_edge.agent.config import DEFAULT_CONFIG_FILE, load_settings
from lepton_edge.agent.service import build_agent
from lepton_edge.shared.systemd import Notifier

log = logging.getLogger(__name__)

OFFLINE_READY_AFTER_S = 15.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help=f"TOML settings file (default {DEFAULT_CONFIG_FILE} when it exists)",
    )
    parser.add_argument("--device-id", help="override device_id")
    parser.add_argument("--state-dir", type=Path, help="override state_dir")
    parser.add_argument("--mqtt-host", help="override mqtt.host")
    parser.add_argument("--mqtt-port", type=int, help="override mqtt.port")
    parser.add_argument(
        "--telemetry-interval", type=float, help="override telemetry_interval_s (seconds)"
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.device_id:
        out["device_id"] = args.device_id
    if args.state_dir:
        out["state_dir"] = args.state_dir
    if args.telemetry_interval:
        out["telemetry_interval_s"] = args.telemetry_interval
    mqtt = {k: v for k, v in (("host", args.mqtt_host), ("port", args.mqtt_port)) if v is not None}
    if mqtt:
        out["mqtt"] = mqtt
    return out


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, _overrides(args))
    if settings.log_json:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(_JsonFormatter())
    agent = build_agent(settings, notifier=Notifier())
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    log.info("agent %s started (state in %s)", agent.device_id, settings.state_dir)
    # An offline box is still working (queueing telemetry): tell systemd after a while.
    offline_ready_at = time.monotonic() + OFFLINE_READY_AFTER_S
    while not stop.wait(0.2):
        if not agent.ready.is_set() and time.monotonic() > offline_ready_at:
            agent.mark_ready("running offline: broker unreachable, telemetry queued")
    agent.stop()
    return 0
