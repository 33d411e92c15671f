"""The small machinery behind `lepton`, `lepton-agent` and `lepton-controller`.

Each subcommand lives in its own module exposing `configure(parser)` and `run(args) -> int`.
A module is imported only when its subcommand is chosen, so `--help` is instant and a box that
installed only the agent extras can still run what it has. A `UserError` becomes one line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from lepton_edge.shared import __version__
from lepton_edge.shared.errors import UserError


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str
    help: str
    extra: str = ""  # the pip extra that brings the module's dependencies


def _load(prog: str, command: Subcommand) -> ModuleType:
    try:
        return importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        if exc.name and command.module.startswith(exc.name):
            raise UserError(f"'{prog} {command.name}' is not available in this version") from None
        hint = f": pip install 'lepton-edge[{command.extra}]'" if command.extra else ""
        raise UserError(
            f"'{prog} {command.name}' needs the Python package {exc.name!r}, not installed{hint}"
        ) from None


def run_cli(
    prog: str, description: str, commands: Sequence[Subcommand], argv: Sequence[str] | None
) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR (default WARNING)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = {c.name for c in commands}
    chosen = next((a for a in args_in if a in names), None)
    try:
        for command in commands:
            sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
            if command.name == chosen:
                module = _load(prog, command)
                module.configure(sub)
                sub.set_defaults(_run=module.run)
        args = parser.parse_args(args_in)
        if not getattr(args, "_run", None):
            parser.print_help(sys.stderr)
            return 2
        level = str(args.log_level).upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise UserError(f"--log-level {args.log_level!r}: use DEBUG, INFO, WARNING or ERROR")
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
