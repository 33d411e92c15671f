"""`lepton rollout create|status|pause|resume|abort`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lepton_edge.controller.client import Client, add_connection_args


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="roll a bundle out in waves")
    create.add_argument("bundle_id")
    target = create.add_mutually_exclusive_group(required=True)
    target.add_argument("--all", action="store_true", help="every device")
    target.add_argument("--tag", action="append", help="devices with this tag (repeatable)")
    target.add_argument("--device", action="append", help="this device (repeatable)")
    create.add_argument("--waves", help="cumulative percentages, e.g. 1,10,50,100")
    create.add_argument("--wave-timeout", type=float, help="seconds a wave may take")
    create.add_argument("--soak", type=float, help="seconds a healthy wave waits before the next")
    create.add_argument("--success-threshold", type=float, help="share healthy (0-1]")
    create.add_argument("--error-threshold", type=float, help="share failed before pausing")
    create.add_argument(
        "--no-inference", action="store_true", help="healthy = installed (agents without inference)"
    )
    add_connection_args(create)
    status = sub.add_parser("status", help="show one rollout, or the latest ones")
    status.add_argument("rollout_id", nargs="?")
    add_connection_args(status)
    for name in ("pause", "resume", "abort"):
        p = sub.add_parser(name, help=f"{name} a rollout")
        p.add_argument("rollout_id")
        add_connection_args(p)


def _print(r: dict[str, Any], devices: bool) -> None:
    print(
        f"{r['id']}  bundle {r['bundle_id']}  {r['state'].upper()}  wave {r['current_wave'] + 1}/{len(r['waves'])}"
    )
    if r["reason"]:
        print(f"  {r['reason']}")
    for w in r["waves"]:
        states = ", ".join(f"{k} {v}" for k, v in sorted(w["states"].items()))
        print(f"  wave {w['index'] + 1}: {w['devices']} device(s): {states}")
    if devices:
        for d in r["devices"]:
            print(f"    {d['device_id']:<24} wave {d['wave'] + 1}  {d['state']:<12} {d['detail']}")


def run(args: argparse.Namespace) -> int:
    from lepton_edge.shared.errors import UserError

    client = Client.from_args(args)
    if args.action == "create":
        target: dict[str, Any] = (
            {"all": True}
            if args.all
            else {"tags": args.tag}
            if args.tag
            else {"device_ids": args.device}
        )
        body: dict[str, Any] = {"bundle_id": args.bundle_id, "target": target}
        if args.waves:
            try:
                body["waves"] = [float(x) for x in args.waves.split(",")]
            except ValueError:
                raise UserError(
                    f"--waves {args.waves!r}: use percentages like 1,10,50,100"
                ) from None
        options = {
            "wave_timeout_s": args.wave_timeout,
            "soak_s": args.soak,
            "success_threshold": args.success_threshold,
            "error_threshold": args.error_threshold,
            "require_inferring": False if args.no_inference else None,
        }
        body["options"] = {k: v for k, v in options.items() if v is not None}
        result = client.post("/api/v1/rollouts", json=body)
    elif args.action == "status":
        if args.rollout_id is None:
            rollouts = client.get("/api/v1/rollouts")
            if args.json:
                print(json.dumps(rollouts, indent=2))
                return 0
            for r in rollouts:
                _print(r, devices=False)
            return 0
        result = client.get(f"/api/v1/rollouts/{args.rollout_id}")
    else:
        result = client.post(f"/api/v1/rollouts/{args.rollout_id}/{args.action}")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result, devices=args.action == "status")
    return 0
