"""The demo's MQTT broker: mosquitto on a free port when installed, else embedded amqtt.

mosquitto speaks MQTT v5 (shared subscriptions); amqtt is pure Python and speaks only 3.1.1,
so `Broker.mqtt_version` tells agents and the controller bridge which protocol to use.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from lepton_edge.controller.demo.processes import Child, free_port, port_in_use, wait_for_port
from lepton_edge.shared.errors import UserError

HOST = "127.0.0.1"


@dataclass
class Broker:
    kind: str  # "mosquitto" or "amqtt"
    host: str
    port: int
    mqtt_version: str  # "5" or "3.1.1"
    child: Child

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        self.child.stop()


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def start_broker(workdir: Path, *, port: int | None = None, kind: str = "auto") -> Broker:
    """Start a broker bound to 127.0.0.1 with its own config and log under `workdir`."""
    if port is not None and port_in_use(port, HOST):
        raise UserError(f"MQTT port {port} is in use: pick another --mqtt-port or leave it out")
    binary = mosquitto_binary()
    if kind == "mosquitto" and binary is None:
        raise UserError("mosquitto is not installed: apt-get install mosquitto, or --broker amqtt")
    use_mosquitto = kind == "mosquitto" or (kind == "auto" and binary is not None)
    chosen = port or free_port(HOST)
    workdir.mkdir(parents=True, exist_ok=True)
    if use_mosquitto:
        assert binary is not None
        config = workdir / "mosquitto.conf"
        config.write_text(
            f"listener {chosen} {HOST}\nallow_anonymous true\npersistence false\n"
            # stderr, not a file: mosquitto started as root drops to its own user.
            "log_dest stderr\nlog_type error\nlog_type warning\n"
            "max_queued_messages 10000\n"
        )
        child = Child("mosquitto", [binary, "-c", str(config)], workdir / "mosquitto.out")
        broker = Broker("mosquitto", HOST, chosen, "5", child)
    else:
        argv = [sys.executable, "-m", "lepton_edge.controller.demo.amqtt_broker", HOST, str(chosen)]
        child = Child("amqtt", argv, workdir / "amqtt.log")
        broker = Broker("amqtt", HOST, chosen, "3.1.1", child)
    try:
        started = wait_for_port(chosen, 15.0, HOST, alive=child.alive)
    except BaseException:  # Ctrl-C while waiting: do not leave the broker behind
        child.stop()
        raise
    if not started:
        child.stop()
        raise UserError(
            f"the {broker.kind} broker did not start on port {chosen}: {child.log_tail(300).strip()}"
        )
    return broker
