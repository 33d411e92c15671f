"""`lepton-controller key export`: the public key agents pin to verify bundles (PEM).

The signing key lives at `{state_dir}/keys/signing.pem` and is created on first use, as
`serve` and `lepton build` do; only its public half is ever printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lepton_edge.controller.config import load_settings
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.signing import key_id, load_or_create_private_key, public_pem


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="print the public key agents pin (controller.pem)")
    export.add_argument("--out", type=Path, help="write it to this file instead of stdout")
    export.add_argument("--config", type=Path)
    export.add_argument("--state-dir", type=Path)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, state_dir=args.state_dir)
    path = settings.key_path()
    try:
        public = load_or_create_private_key(path).public_key()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot use the signing key {path}: {exc}") from None
    pem = public_pem(public)
    if args.out is None:
        sys.stdout.write(pem.decode())
    else:
        args.out.write_bytes(pem)
    print(f"key {key_id(public)} from {path}", file=sys.stderr)
    return 0
