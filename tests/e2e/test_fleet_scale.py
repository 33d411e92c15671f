"""A thousand devices for a minute: the load generator (bench/loadgen.py) against a real
`lepton-controller serve` and mosquitto. Checked: every sample the broker acknowledged is in
the registry, no device shows a gap, and cursor pages over the fleet list every device once.
Not checked here: rates and CPU (bench/fleet_scale.py measures those)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import loadgen
from bench.controller_ingest import QuietMosquitto
from tests.deploy.support import ControllerProcess

pytestmark = pytest.mark.slow

DEVICES = 1000
SECONDS = 60.0
INTERVAL = 5.0


def walk(controller: ControllerProcess, params: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    query = dict(params)
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    while True:
        reply = httpx.get(f"{controller.url}/api/v1/devices", params=query, headers=headers)
        assert reply.status_code == 200, reply.text
        rows += reply.json()
        cursor = reply.headers.get("x-next-cursor")
        if not cursor:
            return rows
        query = {**params, "cursor": cursor}


def test_a_thousand_devices_lose_no_sample(tmp_path: Path) -> None:
    broker = QuietMosquitto(tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    broker.start()
    controller = ControllerProcess(
        tmp_path / "controller",
        {"mqtt": {"enabled": True, "host": broker.host, "port": broker.port}},
    )
    try:
        controller.start()
        args = loadgen.parser().parse_args(
            [
                f"--devices={DEVICES}",
                f"--seconds={SECONDS}",
                f"--interval={INTERVAL}",
                "--ramp=10",
                f"--port={broker.port}",
            ]
        )
        counts = loadgen.run(args)
        assert counts.failed == 0 and counts.connected == DEVICES, counts
        assert counts.acked == counts.published, counts  # the broker holds every message
        assert counts.samples >= DEVICES * (SECONDS // INTERVAL - 1), counts

        def stored() -> list[dict[str, Any]]:
            return walk(controller, {"limit": 250})  # by id: stable while states arrive

        deadline = time.monotonic() + 60
        while True:
            devices = stored()
            total = sum(d["telemetry_count"] for d in devices)
            if total >= counts.samples or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert len(devices) == len({d["id"] for d in devices}) == DEVICES
        assert total == counts.samples, f"{counts.samples - total} acknowledged samples not stored"
        assert sum(d["gaps"] + d["duplicates"] for d in devices) == 0
        summary = httpx.get(
            f"{controller.url}/api/v1/devices/summary",
            headers={"Authorization": f"Bearer {controller.admin_token}"},
        ).json()
        assert summary["total"] == DEVICES
        assert summary["online"]["offline"] == DEVICES  # each said goodbye on its state topic
    finally:
        controller.stop()
        broker.stop()
