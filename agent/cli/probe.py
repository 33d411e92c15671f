"""`lepton-agent probe`: print what this device is (hardware profile) and one sample of
every probe, exactly as the agent would report them."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from lepton_edge.agent.config import DEFAULT_CONFIG_FILE, load_settings
from lepton_edge.agent.hardware import build_profile
from lepton_edge.agent.probes import build_probes


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help=f"settings file (default {DEFAULT_CONFIG_FILE} if present)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")


def collect(config: Path | None) -> dict[str, Any]:
    settings = load_settings(config)
    probes = build_probes(settings)
    profile = build_profile(settings, probes.gpu)
    time.sleep(0.2)  # CPU utilisation needs an interval to measure over
    sample: dict[str, Any] = {}
    for name in ("cpu", "memory", "gpu", "battery", "thermal"):
        probe = getattr(probes, name)
        reading = probe.sample() if probe is not None else None
        sample[name] = reading.model_dump(mode="json") if reading is not None else None
    return {
        "hardware": profile.model_dump(mode="json"),
        "hardware_class": profile.hardware_class(),
        "sources": probes.describe(),
        "sample": sample,
    }


def run(args: argparse.Namespace) -> int:
    report = collect(args.config)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    hw = report["hardware"]
    gpu = hw.get("gpu")
    print(f"arch        {hw['arch']}  ({hw['os']})")
    print(f"cpu         {hw['cpu_model']}, {hw['cores']} cores")
    print(f"features    {', '.join(hw['features']) or '-'}")
    print(f"memory      {hw['memory_mb']} MB")
    print(f"gpu         {gpu['vendor'] + ' ' + gpu['name'] if gpu else 'none'}")
    runtimes = ", ".join(f"{k} {v}" for k, v in hw["runtimes"].items()) or "none"
    print(f"runtimes    {runtimes}")
    print(f"onnx EPs    {', '.join(hw['onnx_providers']) or '-'}")
    print(f"class       {report['hardware_class']}")
    for name, value in report["sample"].items():
        source = report["sources"][name] or "absent"
        shown = json.dumps(value, separators=(",", ":")) if value is not None else "null"
        print(f"{name:<11} [{source}] {shown}")
    return 0
