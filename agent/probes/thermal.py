"""Thermal probes: `/sys/class/thermal/thermal_zone*/temp` (millidegrees) and a simulated one.

The simulated source heats toward ambient + `c_per_w` × draw with a time constant, draw
coming from the same power model as the simulated battery; `set_ambient` makes a box "hot".
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from lepton_edge.agent.config import SimulatedThermalSettings
from lepton_edge.shared.messages import ThermalSample

#: Readings outside this range are a broken sensor, not a temperature.
PLAUSIBLE_C = (-40.0, 150.0)


class ThermalProbe(Protocol):
    source: str

    def sample(self) -> ThermalSample | None: ...


class SysfsThermal:
    source = "sysfs"

    def __init__(self, sysfs_root: Path = Path("/sys")) -> None:
        self.root = sysfs_root / "class" / "thermal"

    def zones(self) -> dict[str, float]:
        """Zone name -> °C for every zone with a plausible reading."""
        out: dict[str, float] = {}
        if not self.root.is_dir():
            return out
        for zone in sorted(self.root.glob("thermal_zone*")):
            try:
                milli = float((zone / "temp").read_text().strip())
            except (OSError, ValueError, UnicodeDecodeError):
                continue
            celsius = milli / 1000.0
            if not math.isfinite(celsius) or not PLAUSIBLE_C[0] <= celsius <= PLAUSIBLE_C[1]:
                continue
            try:
                name = (zone / "type").read_text().strip() or zone.name
            except (OSError, UnicodeDecodeError):
                name = zone.name
            if name in out:
                name = f"{name}:{zone.name}"
            out[name] = round(celsius, 2)
        return out

    def present(self) -> bool:
        return bool(self.zones())

    def sample(self) -> ThermalSample | None:
        zones = self.zones()
        if not zones:
            return None
        return ThermalSample(max_c=max(zones.values()), zones=zones, source=self.source)


class SimulatedThermal:
    source = "simulated"

    def __init__(
        self,
        settings: SimulatedThermalSettings | None = None,
        *,
        cpu_seconds: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = s = settings or SimulatedThermalSettings()
        self._cpu_seconds = cpu_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._ambient = s.ambient_c
        self._temp = s.ambient_c + s.c_per_w * s.idle_w
        self._last_t = clock()
        self._last_cpu = cpu_seconds()

    def set_ambient(self, celsius: float) -> None:
        """Change the surroundings (demos: 'the box is in the sun')."""
        with self._lock:
            self._advance()
            self._ambient = celsius

    def _advance(self) -> None:
        s = self.settings
        now, cpu = self._clock(), self._cpu_seconds()
        real_dt = max(0.0, now - self._last_t)
        cpu_dt = max(0.0, cpu - self._last_cpu)
        self._last_t, self._last_cpu = now, cpu
        if real_dt <= 0:
            return
        watts = s.idle_w + s.w_per_cpu_s * cpu_dt / real_dt
        target = self._ambient + s.c_per_w * watts
        self._temp += (target - self._temp) * (1.0 - math.exp(-real_dt * s.time_scale / s.tau_s))

    def sample(self) -> ThermalSample:
        with self._lock:
            self._advance()
            t = round(self._temp, 2)
        return ThermalSample(max_c=t, zones={"simulated": t}, source=self.source)


def detect_thermal(
    choice: str,
    sysfs_root: Path,
    simulated: SimulatedThermalSettings | None,
    cpu_seconds: Callable[[], float],
    clock: Callable[[], float] | None = None,
) -> ThermalProbe | None:
    """The thermal plugin for `choice`; "auto" = simulated if configured, sysfs, none."""
    if choice == "simulated" or (choice == "auto" and simulated is not None):
        return SimulatedThermal(simulated, cpu_seconds=cpu_seconds, clock=clock or time.monotonic)
    if choice in ("auto", "sysfs"):
        sysfs = SysfsThermal(sysfs_root)
        if sysfs.present() or choice == "sysfs":
            return sysfs
    return None
