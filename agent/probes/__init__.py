"""Probes: what the device is doing right now, one small plugin per source.

Every probe has a `source` name and a `sample()` that returns a sample model or None when the
thing measured is absent (no battery, no GPU): absent is `null` on the wire, never 0.
`build_probes` picks the plugin for each kind from what the device has and the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pydantic import BaseModel

from lepton_edge.agent.config import AgentSettings
from lepton_edge.agent.probes.battery import BatteryProbe, detect_battery
from lepton_edge.agent.probes.cpu import CpuProbe
from lepton_edge.agent.probes.gpu import GpuProbe, detect_gpu
from lepton_edge.agent.probes.memory import MemoryProbe
from lepton_edge.agent.probes.thermal import ThermalProbe, detect_thermal

log = logging.getLogger(__name__)

S_co = TypeVar("S_co", bound=BaseModel, covariant=True)


class Probe(Protocol[S_co]):
    """The one interface: a name for where readings come from, and a reading."""

    source: str

    def sample(self) -> S_co | None: ...


@dataclass
class Probes:
    cpu: CpuProbe
    memory: MemoryProbe
    gpu: GpuProbe | None
    battery: BatteryProbe | None
    thermal: ThermalProbe | None

    def describe(self) -> dict[str, str | None]:
        """Which plugin each kind uses, for logs and `lepton-agent probe`."""
        return {
            "cpu": self.cpu.source,
            "memory": self.memory.source,
            "gpu": self.gpu.source if self.gpu else None,
            "battery": self.battery.source if self.battery else None,
            "thermal": self.thermal.source if self.thermal else None,
        }


def build_probes(
    settings: AgentSettings,
    cpu_seconds: Callable[[], float] = lambda: 0.0,
    clock: Callable[[], float] | None = None,
) -> Probes:
    """Probes for this device; `cpu_seconds` (inference CPU time) drives simulated sources."""
    p = settings.probes
    probes = Probes(
        cpu=CpuProbe(proc_root=p.proc_root),
        memory=MemoryProbe(),
        gpu=detect_gpu(p.gpu, p.sysfs_root),
        battery=detect_battery(
            p.battery, p.sysfs_root, settings.simulate.battery, cpu_seconds, clock
        ),
        thermal=detect_thermal(
            p.thermal, p.sysfs_root, settings.simulate.thermal, cpu_seconds, clock
        ),
    )
    log.info("probes: %s", probes.describe())
    return probes


__all__ = ["BatteryProbe", "GpuProbe", "Probe", "Probes", "ThermalProbe", "build_probes"]
