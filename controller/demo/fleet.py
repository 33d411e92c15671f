"""Start the demo's simulated devices: one `lepton-agent run --config …` process per device.

The controller package never imports `agent`; like a real fleet, each device is its own
process that reaches the controller only over MQTT and HTTP.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_edge.controller.demo import toml
from lepton_edge.controller.demo.broker import Broker
from lepton_edge.controller.demo.processes import Child
from lepton_edge.controller.demo.profiles import DeviceProfile

POLICY_DWELL_S = 4.0
_RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}


@dataclass
class DemoAgent:
    device_id: str
    profile: DeviceProfile
    config: Path
    child: Child


def _runtime_version(runtime: str) -> str:
    try:
        return importlib.metadata.version(_RUNTIME_PACKAGES[runtime])
    except importlib.metadata.PackageNotFoundError:
        return "simulated"


def agent_argv(config: Path) -> list[str]:
    script = Path(sys.executable).with_name("lepton-agent")
    if script.exists():
        return [str(script), "run", "--config", str(config)]
    found = shutil.which("lepton-agent")
    if found:
        return [found, "run", "--config", str(config)]
    code = "import sys; from lepton_edge.agent.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, "run", "--config", str(config)]


def agent_config(
    device_id: str,
    profile: DeviceProfile,
    *,
    broker: Broker,
    state_dir: Path,
    controller_key_file: Path,
    data_dir: Path | None,
    telemetry_interval_s: float,
    video: Path | None = None,
) -> dict[str, Any]:
    """The agent.toml of one simulated device (see agent/config.py for every key); with
    `video`, a camera box that plays it in a loop and publishes what it detects."""
    simulate: dict[str, Any] = {
        "profile": {
            "arch": profile.arch,
            "cpu_model": profile.cpu_model,
            "cores": profile.cores,
            "features": list(profile.features),
            "memory_mb": profile.memory_mb,
            "gpu": profile.gpu,
            "runtimes": {r: _runtime_version(r) for r in profile.runtimes},
        }
    }
    if profile.battery is not None:
        b = profile.battery
        simulate["battery"] = {
            "capacity_wh": b.capacity_wh,
            "start_percent": b.start_percent,
            "idle_w": b.idle_w,
            "w_per_cpu_s": b.w_per_cpu_s,
            "charging": b.charging,
            "charge_w": b.charge_w,
            "time_scale": b.time_scale,
        }
    results: dict[str, Any] = {"max_per_s": 2.0, "thumbnail_interval_s": 2.0}
    if video is not None:
        engine: dict[str, Any] = {"source": "video", "video": str(video), "video_loop": True}
    elif data_dir is not None:
        engine = {
            "source": "idx",
            "source_path": data_dir / "t10k-images-idx3-ubyte.gz",
            "labels_path": data_dir / "t10k-labels-idx1-ubyte.gz",
        }
    else:
        engine = {"source": "synthetic"}
    # One runtime thread and a modest frame rate: eight devices share this machine's cores.
    engine.update({"fps": profile.fps, "threads": 1, "warmup_runs": 2})
    if video is not None:
        engine.pop("fps")  # the video's own frame rate
    return {
        "device_id": device_id,
        "state_dir": state_dir,
        "controller_key_file": controller_key_file,
        "telemetry_interval_s": telemetry_interval_s,
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "protocol": broker.mqtt_version,
            "reconnect_max_s": 2.0,
        },
        "probes": {
            "battery": "simulated" if profile.battery is not None else "none",
            "thermal": "none",
            "gpu": "none",
        },
        "simulate": simulate,
        "engine": engine,
        "results": results,
        # Short dwell so a time-scaled battery shows its steps within a one-minute demo.
        "policy": {"min_dwell_s": POLICY_DWELL_S},
    }


def start_agent(
    device_id: str,
    profile: DeviceProfile,
    workdir: Path,
    *,
    broker: Broker,
    controller_key_file: Path,
    data_dir: Path | None,
    telemetry_interval_s: float = 1.0,
    video: Path | None = None,
) -> DemoAgent:
    """Write the device's config under `workdir/{id}/` and start its agent process."""
    home = workdir / device_id
    home.mkdir(parents=True, exist_ok=True)
    config = home / "agent.toml"
    settings = agent_config(
        device_id,
        profile,
        broker=broker,
        state_dir=home / "state",
        controller_key_file=controller_key_file,
        data_dir=data_dir,
        telemetry_interval_s=telemetry_interval_s,
        video=video,
    )
    config.write_text(toml.dumps(settings))
    scratch = home / "tmp"  # runtime temp files stay inside the demo's dir
    scratch.mkdir(exist_ok=True)
    env = {"TMPDIR": str(scratch)}
    child = Child(device_id, agent_argv(config), home / "agent.log", env=env, cwd=home)
    return DemoAgent(device_id, profile, config, child)
