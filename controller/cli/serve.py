"""`lepton-controller serve`: run the API, the MQTT bridge and the rollout loop."""

from __future__ import annotations

import argparse
from pathlib import Path

from lepton_edge.controller.config import load_settings
from lepton_edge.shared.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="TOML file (default /etc/lepton/controller.toml)"
    )
    parser.add_argument("--host", dest="http_host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", dest="http_port", type=int, help="listen port (default 8080)")
    parser.add_argument("--state-dir", type=Path, help="database, keys, artifacts")
    parser.add_argument("--database-url", help="SQLAlchemy URL; default SQLite in the state dir")
    parser.add_argument("--public-url", help="URL agents use to reach this controller")
    parser.add_argument("--mqtt-host", help="broker host")
    parser.add_argument("--mqtt-port", type=int, help="broker port")


def run(args: argparse.Namespace) -> int:
    from lepton_edge.controller.app import create_app
    from lepton_edge.controller.systemd import serve

    overrides = {
        k: getattr(args, k)
        for k in ("http_host", "http_port", "state_dir", "database_url", "public_url")
    }
    settings = load_settings(args.config, **overrides)
    mqtt = settings.mqtt.model_copy(
        update={
            k: v for k, v in (("host", args.mqtt_host), ("port", args.mqtt_port)) if v is not None
        }
    )
    settings = settings.model_copy(update={"mqtt": mqtt})
    app = create_app(settings)
    try:
        app.state.controller.db.migrate()  # a bad database_url: one line here, no traceback
    except UserError:
        app.state.controller.leader.close()
        raise
    try:
        # uvicorn, plus READY=1 / WATCHDOG=1 for the Type=notify unit (no-ops outside systemd)
        serve(app, settings.http_host, settings.http_port)
    except OSError as exc:
        raise UserError(
            f"cannot listen on {settings.http_host}:{settings.http_port}: {exc.strerror}; "
            "choose another --port"
        ) from None
    return 0
