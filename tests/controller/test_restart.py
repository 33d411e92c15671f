"""A controller process killed (SIGKILL) mid-rollout and started again finishes the rollout
once: no device is deployed twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lepton_edge.controller.bundles import pack
from lepton_edge.shared.signing import load_or_create_private_key, public_pem
from tests.controller.conftest import ADMIN, AUTH
from tests.controller.helpers import SimAgent, make_bundle, wait_for
from tests.mosquitto import Mosquitto, free_port


def _serve(
    tmp_path: Path, db_url: str, broker: Mosquitto, port: int, **settings: str
) -> subprocess.Popen[bytes]:
    """`lepton-controller serve` in a process of its own; `settings` are more environment
    (`INGEST__HISTORY_PER_DEVICE="1000"` -> LEPTON_CONTROLLER_INGEST__HISTORY_PER_DEVICE)."""
    env = (
        os.environ
        | {
            "LEPTON_CONTROLLER_STATE_DIR": str(tmp_path / "state"),
            "LEPTON_CONTROLLER_DATABASE_URL": db_url,
            "LEPTON_CONTROLLER_BOOTSTRAP_ADMIN_TOKEN": ADMIN,
            "LEPTON_CONTROLLER_MQTT__HOST": broker.host,
            "LEPTON_CONTROLLER_MQTT__PORT": str(broker.port),
            "LEPTON_CONTROLLER_MQTT__USERNAME": "",
            "LEPTON_CONTROLLER_ROLLOUT__TICK_S": "0.1",
            "LEPTON_CONTROLLER_ROLLOUT__SOAK_S": "1",
            "LEPTON_CONTROLLER_ROLLOUT__RESEND_AFTER_S": "1",
            "LEPTON_CONTROLLER_INGEST__FLUSH_INTERVAL_MS": "20",
        }
        | {f"LEPTON_CONTROLLER_{k}": v for k, v in settings.items()}
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from lepton_edge.controller.cli import controller_main; raise SystemExit(controller_main())",
            "serve",
            "--port",
            str(port),
            "--public-url",
            f"http://127.0.0.1:{port}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / f"serve-{port}.log", "ab"),  # noqa: SIM115
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / f"serve-{port}.log").read_text()[-3000:])
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()["mqtt"] is True
        except httpx.HTTPError:
            return False

    wait_for(up, 30, 0.1, "controller process up")
    return proc


@pytest.mark.slow
def test_killed_mid_rollout_completes_once(
    tmp_path: Path, db_url: str, mosquitto: Mosquitto
) -> None:
    port = free_port()
    key = load_or_create_private_key(tmp_path / "state" / "keys" / "signing.pem")
    make_bundle(tmp_path / "bundle", key)
    proc = _serve(tmp_path, db_url, mosquitto, port)
    agents = [
        SimAgent(f"r-{i}", mosquitto.port, public_pem(key.public_key())).start() for i in range(4)
    ]
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=5)
        assert http.post("/api/v1/bundles", content=pack(tmp_path / "bundle")).status_code == 201
        wait_for(lambda: len(http.get("/api/v1/devices?online=true").json()) == 4)
        rid = http.post(
            "/api/v1/rollouts", json={"bundle_id": "fmnist-1", "target": {"all": True}}
        ).json()["id"]
        # kill it while the second wave is being deployed
        wait_for(
            lambda: http.get(f"/api/v1/rollouts/{rid}").json()["current_wave"] >= 1, what="wave 2"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        installed_before = sum(a.installs["fmnist-1"] for a in agents)
        assert 1 <= installed_before < 4
        proc = _serve(tmp_path, db_url, mosquitto, port)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=5)
        done = wait_for(
            lambda: (s := http.get(f"/api/v1/rollouts/{rid}").json())["state"] == "completed" and s,
            30,
            what="rollout completed after restart",
        )
        assert {d["state"] for d in done["devices"]} == {"healthy"}
        for a in agents:
            assert a.installs["fmnist-1"] == 1, a.device_id
            assert len(a.deploy_commands) == 1, (a.device_id, a.deploy_commands)
    finally:
        for a in agents:
            a.stop()
        proc.terminate()
        proc.wait(10)
