"""`lepton-agent probe` prints the profile and one reading per probe (absent = null)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lepton_edge.agent.cli import main


def test_probe_json_with_simulated_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[probes]\nsysfs_root = "{tmp_path}"\n'
        "[simulate.battery]\nstart_percent = 64\n"
        '[simulate.profile]\narch = "aarch64"\nfeatures = ["neon", "asimddp"]\n'
    )
    assert main(["probe", "--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["hardware"]["arch"] == "aarch64"
    assert report["hardware"]["features"] == ["neon", "asimddp"]
    assert report["sources"]["battery"] == "simulated"
    assert report["sample"]["battery"]["percent"] == pytest.approx(64, abs=0.1)
    assert report["sample"]["gpu"] is None and report["sample"]["thermal"] is None
    assert 0 <= report["sample"]["cpu"]["percent"] <= 100


def test_probe_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[probes]\nsysfs_root = "{tmp_path}"\n')
    assert main(["probe", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "features" in out and "battery     [absent] null" in out


def test_probe_bad_config_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[probes]\nbattery = 'nuclear'\n")
    assert main(["probe", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "probes.battery" in err[0]
