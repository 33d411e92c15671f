"""Idle agent cost: `lepton-agent run` (telemetry at 1 Hz, no model) against a real mosquitto.

Measures the agent process's CPU time over a window (as % of one core) and its RSS, from
outside the process with psutil. Goal: <= 1 % of one core averaged over 60 s.

    .venv/bin/python bench/agent_idle.py            # 60 s window (the README figure)
    .venv/bin/python bench/agent_idle.py --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.agent.agent_support import Watcher, start_agent_process, stop_process  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    parser.add_argument("--interval", type=float, default=1.0, help="telemetry interval (s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "broker").mkdir()
        with Mosquitto(tmp / "broker") as broker:
            cfg = tmp / "agent.toml"
            cfg.write_text(
                f'device_id = "bench-idle"\nstate_dir = "{tmp / "state"}"\n'
                f"telemetry_interval_s = {args.interval}\n[mqtt]\nport = {broker.port}\n"
            )
            watcher = Watcher(broker.port, "lepton/v1/dev/bench-idle/telemetry")
            proc = start_agent_process(cfg)
            try:
                if not watcher.wait_for(lambda m: len(m) >= 3, 30):
                    print("agent sent no telemetry", file=sys.stderr)
                    return 1
                p = psutil.Process(proc.pid)
                time.sleep(1.0)  # past start-up
                before = p.cpu_times()
                received_before = len(watcher.messages)
                t0 = time.monotonic()
                rss_peak = 0
                while time.monotonic() - t0 < args.seconds:
                    rss_peak = max(rss_peak, p.memory_info().rss)
                    time.sleep(0.5)
                after = p.cpu_times()
                wall = time.monotonic() - t0
                rss_end = p.memory_info().rss
                received = len(watcher.messages) - received_before
            finally:
                stop_process(proc)
                watcher.close()
    cpu_s = (after.user + after.system) - (before.user + before.system)
    result = {
        "window_s": round(wall, 1),
        "telemetry_interval_s": args.interval,
        "telemetry_received": received,
        "cpu_seconds": round(cpu_s, 3),
        "cpu_percent_of_one_core": round(100.0 * cpu_s / wall, 3),
        "rss_mb_end": round(rss_end / 2**20, 1),
        "rss_mb_peak": round(rss_peak / 2**20, 1),
        "cores_on_machine": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    verdict = "OK" if result["cpu_percent_of_one_core"] <= 1.0 else "OVER"
    print(
        f"idle agent: {result['cpu_percent_of_one_core']} % of one core over {wall:.0f} s "
        f"(goal <= 1 %: {verdict}), RSS {result['rss_mb_end']} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
