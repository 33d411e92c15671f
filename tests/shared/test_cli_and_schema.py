import json
import subprocess
import sys
from pathlib import Path

import pytest

from lepton_edge.shared import __version__
from lepton_edge.shared.topics import Kind

ENTRY_POINTS = ["lepton", "lepton-agent", "lepton-controller"]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("prog", ENTRY_POINTS)
def test_help_and_version_work(prog: str) -> None:
    out = subprocess.run([BIN / prog, "--help"], capture_output=True, text=True, check=True)
    assert "usage:" in out.stdout
    out = subprocess.run([BIN / prog, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{prog} {__version__}"


def test_unknown_subcommand_is_one_line_error() -> None:
    out = subprocess.run([BIN / "lepton", "nonsense"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_schema_command_writes_every_kind(tmp_path: Path) -> None:
    subprocess.run([BIN / "lepton", "schema", str(tmp_path)], check=True, capture_output=True)
    for kind in Kind:
        schema = json.loads((tmp_path / f"{kind.value}.schema.json").read_text())
        assert schema.get("properties") or schema.get("oneOf") or schema.get("discriminator")
    assert "variants" in json.loads((tmp_path / "manifest.schema.json").read_text())["properties"]


def test_schema_module_runs_standalone(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "lepton_edge.shared.schema", str(tmp_path)], check=True)
    assert (tmp_path / "cmd.schema.json").exists()
