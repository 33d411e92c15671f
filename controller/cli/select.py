"""`lepton select --device ID [--bundle ID]`: the device's ladder and why each variant lost."""

from __future__ import annotations

import argparse
import json

from lepton_edge.controller.client import Client, add_connection_args
from lepton_edge.shared.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", required=True, help="device id")
    parser.add_argument("--bundle", help="bundle id (default: the newest bundle)")
    add_connection_args(parser)


def run(args: argparse.Namespace) -> int:
    client = Client.from_args(args)
    bundle = args.bundle
    if bundle is None:
        bundles = client.get("/api/v1/bundles")
        if not bundles:
            raise UserError("no bundle on the controller yet: lepton models push DIR")
        bundle = bundles[0]["id"]
    result = client.get(f"/api/v1/devices/{args.device}/ladder", params={"bundle_id": bundle})
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"device {result['device_id']}  bundle {result['bundle_id']}  hardware class {result['hardware_class']}"
    )
    for note in result["notes"]:
        print(f"  note: {note}")
    print("ladder:")
    for step in result["ladder"]["steps"]:
        facts = result["variants"].get(step["variant_id"], {})
        model = f"{facts.get('architecture', '?')} {facts.get('precision', '?')}"
        print(f"  {step['level']:<12} {step['variant_id']:<30} {model:<16} {step['why']}")
    if result["ladder"]["rejected"]:
        print("not chosen:")
        for variant, why in sorted(result["ladder"]["rejected"].items()):
            print(f"  {variant:<30} {why}")
    return 0
