"""The hardware profile an agent announces at start: what this box is, truthfully.

ISA features come from `/proc/cpuinfo` flags (x86) or Features (ARM) and are normalised to
`lepton_edge.shared.hardware.INFERENCE_FEATURES`; simulated overrides let a demo fleet pretend to be other
boxes.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import psutil

from lepton_edge.agent import runtimes
from lepton_edge.agent.config import AgentSettings
from lepton_edge.agent.probes.gpu import GpuProbe
from lepton_edge.shared import __version__
from lepton_edge.shared.hardware import INFERENCE_FEATURES, HardwareProfile

#: Inference feature -> any of these cpuinfo flags (x86 `flags`, ARM `Features`) implies it.
FEATURE_FLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni",),
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
    "neon": ("neon", "asimd"),  # AArch64 calls NEON "asimd"
    "asimddp": ("asimddp",),
    "fp16": ("f16c", "fphp", "asimdhp"),  # f16c on x86; fp16 arithmetic on ARM
}


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(CPU model name, set of raw flags) from the text of /proc/cpuinfo."""
    model = ""
    flags: set[str] = set()
    arm_part = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "model", "cpu model", "hardware") and not model and value:
            if not value.isdigit():  # x86 "model : 85" is a number, not a name
                model = value
        elif key in ("flags", "features"):
            flags.update(value.split())
        elif key == "cpu part" and not arm_part:
            arm_part = value
    if not model and arm_part:
        model = f"ARM part {arm_part}"
    return model, flags


def inference_features(flags: set[str]) -> list[str]:
    """The INFERENCE_FEATURES a set of raw cpuinfo flags implies, in canonical order."""
    return [f for f in INFERENCE_FEATURES if any(flag in flags for flag in FEATURE_FLAGS[f])]


def installed_runtimes() -> tuple[dict[str, str], list[str]]:
    """(runtime -> version, ONNX Runtime providers): what `lepton_edge.agent.runtimes` can load here."""
    return dict(runtimes.installed()), list(runtimes.onnx_providers())


def build_profile(settings: AgentSettings, gpu: GpuProbe | None = None) -> HardwareProfile:
    """This device's profile, with `settings.simulate.profile` overrides applied."""
    try:
        cpuinfo = (settings.probes.proc_root / "cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    model, flags = parse_cpuinfo(cpuinfo)
    found, providers = installed_runtimes()
    profile = HardwareProfile(
        arch=platform.machine() or "unknown",
        cpu_model=model or platform.processor() or "unknown",
        cores=os.cpu_count() or 1,
        features=inference_features(flags),
        memory_mb=int(psutil.virtual_memory().total // (1024 * 1024)),
        gpu=gpu.info() if gpu else None,
        runtimes=found,
        onnx_providers=providers,
        os=f"{platform.system()} {platform.release()}".strip(),
        agent_version=__version__,
    )
    sim = settings.simulate.profile
    if sim is not None:
        overrides = sim.model_dump(exclude_none=True)
        if sim.gpu is not None:
            overrides["gpu"] = sim.gpu
        profile = profile.model_copy(update=overrides)
        profile = HardwareProfile.model_validate(profile.model_dump())
    return profile


def machine_device_id(machine_id_file: Path = Path("/etc/machine-id")) -> str:
    """A stable device id derived from /etc/machine-id (not the id itself: it is a secret-ish)."""
    try:
        raw = machine_id_file.read_text().strip()
    except OSError:
        raw = ""
    if not raw:
        raise OSError(f"{machine_id_file} is missing or empty")
    return "dev-" + hashlib.sha256(f"lepton:{raw}".encode()).hexdigest()[:16]
