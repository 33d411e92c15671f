"""`lepton models push DIR` (upload a built bundle) and `lepton models list`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lepton_edge.controller.client import Client, add_connection_args
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import MANIFEST_FILE


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    push = sub.add_parser("push", help="upload a bundle folder built by `lepton build`")
    push.add_argument("bundle_dir", type=Path)
    add_connection_args(push)
    ls = sub.add_parser("list", help="list bundles")
    add_connection_args(ls)


def run(args: argparse.Namespace) -> int:
    from lepton_edge.controller.bundles import pack

    client = Client.from_args(args)
    if args.action == "push":
        if not (args.bundle_dir / MANIFEST_FILE).is_file():
            raise UserError(f"{args.bundle_dir} has no {MANIFEST_FILE}: pass a bundle folder")
        result = client.post(
            "/api/v1/bundles",
            content=pack(args.bundle_dir),
            headers={"Content-Type": "application/gzip"},
        )
        verb = "uploaded" if result["created"] else "already there:"
        print(f"{verb} {result['bundle_id']} ({len(result['variants'])} variants)")
        return 0
    bundles = client.get("/api/v1/bundles")
    if args.json:
        print(json.dumps(bundles, indent=2))
    for b in bundles:
        print(f"{b['id']}  {b['model_name']} {b['version']}  {', '.join(b['variants'])}")
    return 0
