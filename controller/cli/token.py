"""`lepton-controller token create --scope admin|read|enroll`: writes to the database directly."""

from __future__ import annotations

import argparse
from pathlib import Path

from lepton_edge.controller.config import load_settings
from lepton_edge.controller.security import Scope, create_token


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="print a new token (only its hash is stored)")
    create.add_argument("--scope", choices=[s.value for s in Scope], default="admin")
    create.add_argument("--name", default="")
    create.add_argument("--device", help="enroll tokens: only for this device id")
    for p in (create,):
        p.add_argument("--config", type=Path)
        p.add_argument("--state-dir", type=Path)
        p.add_argument("--database-url")


def run(args: argparse.Namespace) -> int:
    from lepton_edge.controller.db import Database

    settings = load_settings(args.config, state_dir=args.state_dir, database_url=args.database_url)
    db = Database(settings.db_url())
    try:
        db.migrate()
        with db.session() as session:
            _row, token = create_token(session, Scope(args.scope), args.name, args.device)
    finally:
        db.close()
    print(token)
    return 0
