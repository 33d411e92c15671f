"""`lepton-controller broker-config OUT_DIR`: mosquitto password file + ACL for the fleet.

The controller user reads and writes `lepton/v1/#`; each enrolled device only its own
`lepton/v1/dev/{id}/#`. Point mosquitto at them (`password_file`, `acl_file`) and send it SIGHUP
after enrolling devices.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lepton_edge.controller.config import load_settings
from lepton_edge.shared.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="folder for `passwords` and `acl`")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--database-url")


def run(args: argparse.Namespace) -> int:
    from lepton_edge.controller.db import Database
    from lepton_edge.controller.security import write_broker_files

    settings = load_settings(args.config, state_dir=args.state_dir, database_url=args.database_url)
    m = settings.mqtt
    if not m.username or not m.password:
        raise UserError(
            "the controller's own broker login is not set: set mqtt.username and mqtt.password "
            "(LEPTON_CONTROLLER_MQTT__PASSWORD)"
        )
    ha = settings.homeassistant
    if ha.broker_username and not ha.broker_password:
        raise UserError(
            f"homeassistant.broker_username = {ha.broker_username!r} has no password: set "
            "homeassistant.broker_password (LEPTON_CONTROLLER_HOMEASSISTANT__BROKER_PASSWORD)"
        )
    db = Database(settings.db_url())
    try:
        db.migrate()
        with db.session() as session:
            pw, acl = write_broker_files(
                session, args.out_dir, m.username, m.password, settings.homeassistant
            )
    finally:
        db.close()
    print(f"wrote {pw} and {acl}")
    print(f"mosquitto.conf: password_file {pw.resolve()}\n                acl_file {acl.resolve()}")
    return 0
