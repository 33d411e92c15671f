"""Store-and-forward across a broker outage: telemetry at 10 Hz, the broker stopped for 60 s.

A plain paho subscriber (the controller side, with a persistent session) counts every sequence
number it receives: missing numbers (gaps) and numbers seen twice (duplicates) are reported as
such, with the time it took to drain the backlog once the broker was back.

    .venv/bin/python bench/agent_outbox.py                 # 60 s outage (the README figure)
    .venv/bin/python bench/agent_outbox.py --outage 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lepton_edge.agent.config import AgentSettings  # noqa: E402
from lepton_edge.agent.service import Agent  # noqa: E402
from tests.agent.agent_support import Watcher  # noqa: E402
from tests.mosquitto import Mosquitto  # noqa: E402


def telemetry_seqs(w: Watcher) -> list[int]:
    return [m["seq"] for m in w.json("/telemetry")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the broker is down")
    parser.add_argument("--rate", type=float, default=10.0, help="telemetry per second")
    parser.add_argument("--before", type=float, default=3.0, help="seconds of normal running")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "broker").mkdir()
        # `user root`: when run as root, mosquitto may keep its persistence file in our temp dir
        broker = Mosquitto(tmp / "broker", extra_config="user root").start()
        ctl = Watcher(
            broker.port, "lepton/v1/dev/+/telemetry", client_id="bench-ctl", persistent=True
        )
        agent = Agent(
            AgentSettings(
                device_id="bench-outbox",
                state_dir=tmp / "state",
                telemetry_interval_s=1.0 / args.rate,
                mqtt={"port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
                probes={"sysfs_root": tmp / "no-sysfs"},
            )
        )
        try:
            agent.start()
            agent.wait_ready(30)
            time.sleep(args.before)
            broker.stop()
            down_at = time.monotonic()
            time.sleep(args.outage)
            backlog = len(agent.outbox)
            last_queued = agent.outbox.next_seq("telemetry") - 1
            broker.start()
            up_at = time.monotonic()
            outage = up_at - down_at
            agent.link.connected.wait(60)
            reconnect_s = time.monotonic() - up_at  # the agent's backoff with jitter
            drained = ctl.wait_for(
                lambda _m: last_queued in set(telemetry_seqs(ctl)), timeout=max(60.0, args.outage)
            )
            drain_s = time.monotonic() - up_at
            time.sleep(1.0)
        finally:
            agent.stop()
            time.sleep(0.5)
            ctl.close()
            broker.stop()
    seqs = telemetry_seqs(ctl)
    counts = Counter(seqs)
    top = max(counts) if counts else -1
    missing = [s for s in range(top + 1) if s not in counts]
    duplicates = sorted(s for s, n in counts.items() if n > 1)
    first_seen = list(dict.fromkeys(seqs))
    result = {
        "rate_hz": args.rate,
        "outage_s": round(outage, 1),
        "backlog_at_reconnect": backlog,
        "highest_seq": top,
        "received": len(seqs),
        "unique": len(counts),
        "missing": len(missing),
        "duplicates": len(duplicates),
        "in_order": first_seen == sorted(first_seen),
        "drained": drained,
        "reconnect_s": round(reconnect_s, 2),
        "drain_s": round(drain_s, 2),
        "drain_after_reconnect_s": round(drain_s - reconnect_s, 2),
        "drain_rate_msgs_per_s": round(backlog / drain_s, 1) if drain_s > 0 else None,
        "dropped_reported": max((m.get("dropped", 0) for m in ctl.json("/telemetry")), default=0),
    }
    print(json.dumps(result, indent=2))
    exactly_once = not missing and not duplicates
    print(
        f"{args.rate:g} Hz, {outage:.0f} s outage: {backlog} queued, every seq 0..{top} "
        f"{'received exactly once' if exactly_once else f'NOT exactly once: {len(missing)} missing, {len(duplicates)} duplicated'}"
        f"; backlog drained {drain_s:.2f} s after the broker came back "
        f"({reconnect_s:.2f} s of it reconnect backoff)"
    )
    return 0 if exactly_once and drained else 1


if __name__ == "__main__":
    sys.exit(main())
