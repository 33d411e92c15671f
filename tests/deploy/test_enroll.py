"""`lepton-agent enroll` against a real controller process: config written, key pinned, and
one-line errors for every way it can go wrong (the config is never left half-written)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lepton_edge.agent.cli.enroll import dump_toml
from lepton_edge.agent.config import load_settings
from lepton_edge.shared.signing import load_private_key, public_pem
from tests.deploy.support import DEPLOY, ControllerProcess
from tests.mosquitto import free_port

AGENT = Path(sys.executable).parent / "lepton-agent"
MAKE_CERTS = DEPLOY / "broker/make-certs.sh"
BROKER = {"public_host": "broker.example", "public_port": 8883, "tls": True}


def enroll(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENT), "enroll", *args], capture_output=True, text=True, timeout=60, check=False
    )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def controller(controller_factory: Callable[..., ControllerProcess]) -> ControllerProcess:
    return controller_factory({"mqtt": {"enabled": False, **BROKER}})


def controller_public_pem(controller: ControllerProcess) -> bytes:
    key = load_private_key((controller.workdir / "state/keys/signing.pem").read_bytes())
    return public_pem(key.public_key())


def test_enroll_writes_the_config_and_pins_the_key(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    config = tmp_path / "etc/lepton/agent.toml"
    config.parent.mkdir(parents=True)
    config.write_text("telemetry_interval_s = 2.5\n\n[simulate.battery]\ncapacity_wh = 20.0\n")
    ca = tmp_path / "certs/ca.pem"
    subprocess.run([str(MAKE_CERTS), "ca", str(ca.parent)], check=True, capture_output=True)
    token = controller.enroll_token()
    result = enroll(
        "--controller",
        controller.url,
        "--token",
        token,
        "--device-id",
        "box-1",
        "--config",
        str(config),
        "--ca-file",
        str(ca),
    )
    assert result.returncode == 0, result.stderr
    assert "enrolled box-1" in result.stdout and "TLS" in result.stdout

    settings = load_settings(config)
    assert settings.device_id == "box-1"
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.tls) == (
        "broker.example",
        8883,
        True,
    )
    assert settings.mqtt.username == "box-1" and settings.mqtt.password
    assert settings.mqtt.ca_file == ca
    assert settings.telemetry_interval_s == 2.5  # what was there stays
    assert settings.simulate.battery is not None and settings.simulate.battery.capacity_wh == 20
    assert config.stat().st_mode & 0o777 == 0o640  # it holds the broker password
    key_file = config.parent / "controller.pem"
    assert settings.controller_key_path() == key_file
    assert key_file.read_bytes() == controller_public_pem(controller)

    # The broker login works with the controller's files: the password matches its hash there.
    from lepton_edge.controller.db import Database
    from lepton_edge.controller.security import verify_mosquitto_hash
    from lepton_edge.controller.tables import DeviceCredential

    db = Database(f"sqlite:///{controller.workdir / 'state/controller.db'}")
    with db.session() as session:
        cred = session.get(DeviceCredential, "box-1")
        assert cred is not None and verify_mosquitto_hash(
            settings.mqtt.password, cred.password_hash
        )
    db.close()

    # A token works once: the second try fails in one line and leaves the config alone.
    before = config.read_bytes()
    again = enroll(
        "--controller",
        controller.url,
        "--token",
        token,
        "--device-id",
        "box-1",
        "--config",
        str(config),
    )
    one_line_error(again, "refused", "403", "already used", "token create --scope enroll")
    assert config.read_bytes() == before


def test_bad_token_and_bad_device_id(controller: ControllerProcess, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    one_line_error(
        enroll(
            "--controller",
            controller.url,
            "--token",
            "lep_not-a-real-token",
            "--device-id",
            "box-2",
            "--config",
            str(config),
        ),
        "refused",
        "unknown or revoked",
    )
    one_line_error(
        enroll(
            "--controller",
            controller.url,
            "--token",
            "short",
            "--device-id",
            "box-2",
            "--config",
            str(config),
        ),
        "--token",
    )
    bound = controller.enroll_token(device_id="box-3")
    one_line_error(
        enroll(
            "--controller",
            controller.url,
            "--token",
            bound,
            "--device-id",
            "box-2",
            "--config",
            str(config),
        ),
        "for device box-3",
    )
    one_line_error(
        enroll(
            "--controller",
            controller.url,
            "--token",
            bound,
            "--device-id",
            "no/slash",
            "--config",
            str(config),
        ),
        "--device-id",
    )
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("-----BEGIN CERTIFICATE-----\n")
    one_line_error(
        enroll(
            "--controller",
            controller.url,
            "--token",
            bound,
            "--device-id",
            "box-3",
            "--config",
            str(config),
            "--ca-file",
            str(not_pem),
        ),
        "is not a PEM CA certificate",
    )
    assert not config.exists()


@pytest.fixture
def not_a_controller() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unreachable_or_wrong_controller(not_a_controller: str, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    args = ("--token", "lep_0123456789", "--device-id", "box-4", "--config", str(config))
    one_line_error(
        enroll("--controller", f"http://127.0.0.1:{free_port()}", *args),
        "cannot reach the controller",
        "check --controller",
    )
    one_line_error(enroll("--controller", "controller.example", *args), "use a URL")
    one_line_error(enroll("--controller", not_a_controller, *args), "enrollment endpoint")
    assert not config.exists()


def test_a_different_controller_key_needs_repin(
    controller_factory: Callable[..., ControllerProcess], tmp_path: Path
) -> None:
    first = controller_factory({"mqtt": {"enabled": False}})
    second = controller_factory({"mqtt": {"enabled": False}})
    config = tmp_path / "agent.toml"
    base = ("--device-id", "box-5", "--config", str(config))
    assert enroll("--controller", first.url, "--token", first.enroll_token(), *base).returncode == 0
    pinned = (tmp_path / "controller.pem").read_bytes()
    one_line_error(
        enroll("--controller", second.url, "--token", second.enroll_token(), *base),
        "differs",
        "--repin",
    )
    assert (tmp_path / "controller.pem").read_bytes() == pinned
    result = enroll("--controller", second.url, "--token", second.enroll_token(), *base, "--repin")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "controller.pem").read_bytes() == controller_public_pem(second)


def test_install_root_keeps_paths_as_the_agent_sees_them(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "etc/lepton").mkdir(parents=True)
    subprocess.run(
        [str(MAKE_CERTS), "ca", str(root / "etc/lepton")], check=True, capture_output=True
    )
    result = enroll(
        "--controller",
        controller.url,
        "--token",
        controller.enroll_token(),
        "--device-id",
        "box-6",
        "--root",
        str(root),
        "--ca-file",
        "/etc/lepton/ca.pem",
    )
    assert result.returncode == 0, result.stderr
    written = tomllib.loads((root / "etc/lepton/agent.toml").read_text())
    assert written["controller_key_file"] == "/etc/lepton/controller.pem"
    assert written["mqtt"]["ca_file"] == "/etc/lepton/ca.pem"
    assert (root / "etc/lepton/controller.pem").exists()


def test_toml_writer_round_trips() -> None:
    data = {
        "device_id": 'a"b\\c',
        "flag": True,
        "ratio": 0.25,
        "count": 3,
        "features": ["avx2", "fp16"],
        "mqtt": {"host": "h", "port": 1, "nested": {"deep": [1, 2]}},
        "dotted.key": {"x": 1},
        "simulate": {"profile": {"gpu": {"name": "Orin", "memory_mb": 8}}},
    }
    assert tomllib.loads(dump_toml(data)) == data
