"""Write the JSON Schema of every wire model, for clients not written in Python.

Usage: `python -m lepton_edge.shared.schema OUT_DIR` (or `lepton schema OUT_DIR`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from lepton_edge.shared.manifest import Ladder, Manifest
from lepton_edge.shared.messages import MESSAGE_MODELS
from lepton_edge.shared.topics import Kind


def schemas() -> dict[str, dict[str, Any]]:
    """File stem -> JSON Schema, one per topic kind plus the manifest and ladder."""
    out: dict[str, dict[str, Any]] = {
        kind.value: TypeAdapter(MESSAGE_MODELS[kind]).json_schema() for kind in Kind
    }
    out["manifest"] = Manifest.model_json_schema()
    out["ladder"] = Ladder.model_json_schema()
    return out


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="folder to write <kind>.schema.json files to")


def run(args: argparse.Namespace) -> int:
    for path in write(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m lepton_edge.shared.schema", description=__doc__)
    configure(cli)
    sys.exit(run(cli.parse_args()))
