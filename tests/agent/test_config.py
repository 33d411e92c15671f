"""Settings precedence (flags > env > TOML) and one-line errors for bad config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lepton_edge.agent.config import load_settings
from lepton_edge.shared.errors import UserError
from tests.agent.agent_support import REPO

AGENT_CLI = [
    sys.executable,
    "-c",
    "import sys; from lepton_edge.agent.cli import main; sys.exit(main())",
]


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'device_id = "from-file"\ntelemetry_interval_s = 9\n'
        '[mqtt]\nhost = "file-host"\nport = 1884\nprotocol = "3.1.1"\n'
        "[simulate.battery]\ncapacity_wh = 10\ntime_scale = 60\n"
    )
    monkeypatch.setenv("LEPTON_AGENT_MQTT__HOST", "env-host")
    monkeypatch.setenv("LEPTON_AGENT_TELEMETRY_INTERVAL_S", "7")
    s = load_settings(cfg, {"telemetry_interval_s": 1.5})
    assert s.device_id == "from-file"
    assert s.telemetry_interval_s == 1.5  # flag beats env beats file
    assert s.mqtt.host == "env-host" and s.mqtt.port == 1884 and s.mqtt.protocol == "3.1.1"
    assert s.simulate.battery is not None and s.simulate.battery.time_scale == 60
    assert s.controller_key_path() == Path("/var/lib/lepton/controller.pem")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("telemetry_intervall_s = 5\n", "telemetry_intervall_s"),
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[mqtt]\ncert_file = '/x.pem'\n", "cert_file and key_file go together"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_user_error(tmp_path: Path, text: str, expected: str) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(text)
    with pytest.raises(UserError, match=expected) as info:
        load_settings(cfg)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[mqtt]\nprot = 5\n")
    proc = subprocess.run(
        [*AGENT_CLI, "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "mqtt.prot" in lines[0] and "Traceback" not in proc.stderr


def test_cli_bad_device_id_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'device_id = "a/b#"\nstate_dir = "{tmp_path / "state"}"\n')
    proc = subprocess.run(
        [*AGENT_CLI, "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid device id" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
