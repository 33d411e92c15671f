"""`lepton devices|models|rollout|select` over real HTTP, and one-line errors."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.controller.cli import controller_main, main
from lepton_edge.controller.fleet import Batch
from lepton_edge.shared.messages import State
from tests.controller.conftest import ADMIN, LiveController, live_settings
from tests.controller.helpers import make_bundle, profile
from tests.mosquitto import free_port


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[LiveController]:
    live = LiveController(live_settings(tmp_path, db_url)).start()
    ctl = live.controller
    with ctl.db.session() as session:
        ctl.fleet.apply(
            session,
            Batch(
                states=[
                    State(
                        device_id="pi-1",
                        ts=time.time(),
                        status="online",
                        hardware=profile(
                            cpu_model="Cortex-A72",
                            arch="aarch64",
                            features=["neon"],
                            runtimes={"litert": "1.2"},
                        ),
                    ),
                    State(device_id="nuc-1", ts=time.time(), status="online", hardware=profile()),
                ]
            ),
        )
    try:
        yield live
    finally:
        live.stop()


def test_cli_end_to_end(
    server: LiveController,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEPTON_URL", server.url)
    monkeypatch.setenv("LEPTON_TOKEN", ADMIN)
    make_bundle(tmp_path / "b", server.controller.store.key)
    assert main(["models", "push", str(tmp_path / "b")]) == 0
    assert "uploaded fmnist-1 (5 variants)" in capsys.readouterr().out
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["ID", "ONLINE", "ARCH"]
    assert "pi-1" in out and "aarch64" in out
    assert main(["select", "--device", "pi-1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"performance  tflite-\S+ +base (fp32|fp16|int8) ", out), out
    assert "onnx-fp32" in out and "needs runtime onnxruntime" in out
    assert (
        main(["rollout", "create", "fmnist-1", "--all", "--waves", "50,100", "--no-inference"]) == 0
    )
    out = capsys.readouterr().out
    rid = out.split()[0]
    assert rid.startswith("ro-") and "RUNNING" in out
    assert main(["rollout", "pause", rid]) == 0
    assert "PAUSED" in capsys.readouterr().out
    assert main(["rollout", "resume", rid]) == 0
    assert main(["rollout", "status", rid]) == 0
    assert "wave 1: 1 device(s)" in capsys.readouterr().out
    assert main(["rollout", "abort", rid]) == 0
    assert "ABORTED" in capsys.readouterr().out


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], expect: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert expect in err, err


def test_cli_errors_are_one_line(
    server: LiveController, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    _one_line_error(
        capsys, ["devices", "--url", dead, "--token", ADMIN], "cannot reach the controller"
    )
    _one_line_error(
        capsys, ["devices", "--url", server.url, "--token", "wrong"], "refused the token"
    )
    _one_line_error(capsys, ["devices", "--url", server.url], "pass --token")
    _one_line_error(
        capsys,
        ["select", "--device", "nope", "--bundle", "x", "--url", server.url, "--token", ADMIN],
        "not found",
    )
    _one_line_error(
        capsys,
        ["rollout", "pause", "ro-nope", "--url", server.url, "--token", ADMIN],
        "rollout ro-nope not found",
    )
    _one_line_error(
        capsys, ["rollout", "create", "b", "--all", "--waves", "x", "--url", server.url], "--waves"
    )
    _one_line_error(
        capsys,
        ["models", "push", str(tmp_path), "--url", server.url, "--token", ADMIN],
        "has no manifest.json",
    )
    assert (
        controller_main(
            [
                "token",
                "create",
                "--scope",
                "read",
                "--state-dir",
                str(tmp_path / "s"),
                "--database-url",
                f"sqlite:///{tmp_path / 't.db'}",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("lep_")
    assert (
        controller_main(
            [
                "broker-config",
                str(tmp_path / "bc"),
                "--state-dir",
                str(tmp_path / "s"),
                "--database-url",
                f"sqlite:///{tmp_path / 't.db'}",
            ]
        )
        == 2
    )
    assert "mqtt.password" in capsys.readouterr().err


def test_serve_with_unreachable_database_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    rc = controller_main(
        ["serve", "--state-dir", str(tmp_path), "--database-url", url, "--port", str(free_port())]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "cannot open the database" in err and "Traceback" not in err, err


def test_key_export_prints_the_key_agents_pin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lepton_edge.controller.config import ControllerSettings
    from lepton_edge.shared.signing import load_private_key, load_public_key

    state = tmp_path / "state"
    assert controller_main(["key", "export", "--state-dir", str(state)]) == 0
    printed = capsys.readouterr()
    signing = ControllerSettings(state_dir=state).key_path()
    private = load_private_key(signing.read_bytes())  # created on first use, as serve does
    assert load_public_key(printed.out.encode()) == private.public_key()
    assert "PRIVATE" not in printed.out and str(signing) in printed.err
    out = tmp_path / "controller.pem"
    assert controller_main(["key", "export", "--state-dir", str(state), "--out", str(out)]) == 0
    assert out.read_text() == printed.out  # the same key every time
    capsys.readouterr()
    signing.write_text("not a key")
    assert controller_main(["key", "export", "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot use the signing key" in err
