"""`lepton devices`: list the fleet (filters as in the API)."""

from __future__ import annotations

import argparse
import json
import time

from lepton_edge.controller.client import Client, add_connection_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_connection_args(parser)
    parser.add_argument("--tag")
    parser.add_argument("--online", action="store_true", help="only devices online now")
    parser.add_argument("--arch")
    parser.add_argument("--variant")
    parser.add_argument("--power-level")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0, time.time() - ts)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.0f}h"


def run(args: argparse.Namespace) -> int:
    params = {
        k: v
        for k, v in {
            "tag": args.tag,
            "online": "true" if args.online else None,
            "arch": args.arch,
            "variant": args.variant,
            "power_level": args.power_level,
        }.items()
        if v is not None
    }
    devices = Client.from_args(args).get("/api/v1/devices", params=params)
    if args.json:
        print(json.dumps(devices, indent=2))
        return 0
    cols = ("ID", "ONLINE", "ARCH", "BUNDLE", "VARIANT", "LEVEL", "TAGS", "SEEN")
    rows = [
        (
            d["id"],
            "yes" if d["online"] else "no",
            d["arch"] or "-",
            d["active_bundle"] or "-",
            d["active_variant"] or "-",
            d["power_level"] or "-",
            ",".join(d["tags"]) or "-",
            _ago(d["last_seen"]),
        )
        for d in devices
    ]
    widths = [max(len(str(r[i])) for r in [cols, *rows]) for i in range(len(cols))]
    for row in [cols, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0
