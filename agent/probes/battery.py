"""Battery probes: Linux sysfs (`/sys/class/power_supply`), psutil, and a simulated battery.

The simulated battery drains by a power model (idle watts + watts per CPU-second spent
inferring) so demos and benches can watch the precision ladder react; `time_scale` lets a
50 Wh battery empty in a minute.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import psutil

from lepton_edge.agent.config import SimulatedBatterySettings
from lepton_edge.shared.messages import BatterySample

log = logging.getLogger(__name__)


class BatteryProbe(Protocol):
    source: str

    def sample(self) -> BatterySample | None: ...


def _read(path: Path) -> str | None:
    """A sysfs attribute's text, or None when missing, unreadable or empty."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def _read_number(path: Path) -> float | None:
    text = _read(path)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        log.debug("ignoring non-numeric %s: %r", path, text[:40])
        return None
    return value if math.isfinite(value) else None


class SysfsBattery:
    """The first usable system battery under `{sysfs_root}/class/power_supply`.

    Kernel units: capacity in %, power in µW, current in µA, voltage in µV, energy in µWh,
    charge in µAh. Missing, empty or garbage attributes are skipped, never guessed.
    """

    source = "sysfs"

    def __init__(self, sysfs_root: Path = Path("/sys")) -> None:
        self.root = sysfs_root / "class" / "power_supply"

    def supplies(self, kind: str) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = []
        for supply in sorted(self.root.iterdir()):
            if _read(supply / "type") != kind:
                continue
            if _read(supply / "scope") == "Device":
                continue  # a wireless mouse's battery is not ours
            if kind == "Battery" and _read(supply / "present") == "0":
                continue
            found.append(supply)
        return found

    def present(self) -> bool:
        return any(self._percent(b) is not None for b in self.supplies("Battery"))

    @staticmethod
    def _percent(bat: Path) -> float | None:
        capacity = _read_number(bat / "capacity")
        if capacity is None:
            for now, full in (("energy_now", "energy_full"), ("charge_now", "charge_full")):
                n, f = _read_number(bat / now), _read_number(bat / full)
                if n is not None and f:
                    capacity = 100.0 * n / f
                    break
        if capacity is None:
            return None
        return min(100.0, max(0.0, capacity))

    def _on_mains(self) -> bool | None:
        online = [_read(s / "online") for s in self.supplies("Mains") + self.supplies("USB")]
        known = [o for o in online if o in ("0", "1")]
        return ("1" in known) if known else None

    def sample(self) -> BatterySample | None:
        for bat in self.supplies("Battery"):
            percent = self._percent(bat)
            if percent is None:
                continue
            status = _read(bat / "status")
            if status in ("Charging", "Full"):
                charging = True
            elif status == "Discharging":
                charging = False
            else:  # "Not charging", "Unknown", missing: ask the charger
                charging = bool(self._on_mains())
            voltage = _read_number(bat / "voltage_now")
            power = _read_number(bat / "power_now")
            if power is None:
                current = _read_number(bat / "current_now")
                if current is not None and voltage is not None:
                    power = current * voltage / 1e6  # µA × µV = 1e-12 W; keep µW
            return BatterySample(
                percent=round(percent, 2),
                charging=charging,
                power_w=round(abs(power) / 1e6, 3) if power is not None else None,
                voltage_v=round(abs(voltage) / 1e6, 3) if voltage is not None else None,
                source=self.source,
            )
        return None


class PsutilBattery:
    """psutil's view (works on more platforms, knows less)."""

    source = "psutil"

    def sample(self) -> BatterySample | None:
        try:
            bat = psutil.sensors_battery()
        except (OSError, AttributeError, NotImplementedError):
            return None
        if bat is None:
            return None
        return BatterySample(
            percent=round(min(100.0, max(0.0, float(bat.percent))), 2),
            charging=bool(bat.power_plugged),
            source=self.source,
        )


class SimulatedBattery:
    """A battery that drains by a power model; for demos, benches and tests.

    Draw = `idle_w` + `w_per_cpu_s` × (CPU-seconds spent inferring per second), where the
    CPU time comes from `cpu_seconds()` (the runner's). `time_scale` simulated seconds pass
    per second of `clock()`. Thread-safe.
    """

    source = "simulated"

    def __init__(
        self,
        settings: SimulatedBatterySettings | None = None,
        *,
        cpu_seconds: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = s = settings or SimulatedBatterySettings()
        self._cpu_seconds = cpu_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._energy_wh = s.capacity_wh * s.start_percent / 100.0
        self._charging = s.charging
        self._last_t = clock()
        self._last_cpu = cpu_seconds()
        self._power_w = s.idle_w

    @property
    def percent(self) -> float:
        with self._lock:
            self._advance()
            return 100.0 * self._energy_wh / self.settings.capacity_wh

    @property
    def charging(self) -> bool:
        return self._charging

    def set_charging(self, charging: bool) -> None:
        """Plug in or pull the charger (demos: 'mains -> battery')."""
        with self._lock:
            self._advance()
            self._charging = charging

    def set_percent(self, percent: float) -> None:
        with self._lock:
            self._advance()
            self._energy_wh = self.settings.capacity_wh * min(100.0, max(0.0, percent)) / 100.0

    def _advance(self) -> None:
        s = self.settings
        now, cpu = self._clock(), self._cpu_seconds()
        real_dt = max(0.0, now - self._last_t)
        cpu_dt = max(0.0, cpu - self._last_cpu)
        self._last_t, self._last_cpu = now, cpu
        if real_dt <= 0:
            return
        self._power_w = s.idle_w + s.w_per_cpu_s * cpu_dt / real_dt
        sim_hours = real_dt * s.time_scale / 3600.0
        delta = -self._power_w * sim_hours
        if self._charging:
            delta += s.charge_w * sim_hours
        self._energy_wh = min(s.capacity_wh, max(0.0, self._energy_wh + delta))

    def sample(self) -> BatterySample:
        with self._lock:
            self._advance()
            return BatterySample(
                percent=round(100.0 * self._energy_wh / self.settings.capacity_wh, 3),
                charging=self._charging,
                power_w=round(self._power_w, 3),
                source=self.source,
            )


def detect_battery(
    choice: str,
    sysfs_root: Path,
    simulated: SimulatedBatterySettings | None,
    cpu_seconds: Callable[[], float],
    clock: Callable[[], float] | None = None,
) -> BatteryProbe | None:
    """The battery plugin for `choice`; "auto" = simulated if configured, sysfs, psutil, none."""
    if choice == "simulated" or (choice == "auto" and simulated is not None):
        return SimulatedBattery(simulated, cpu_seconds=cpu_seconds, clock=clock or time.monotonic)
    if choice in ("auto", "sysfs"):
        sysfs = SysfsBattery(sysfs_root)
        if sysfs.present() or choice == "sysfs":
            return sysfs
    if choice in ("auto", "psutil"):
        psu = PsutilBattery()
        if psu.sample() is not None or choice == "psutil":
            return psu
    return None
