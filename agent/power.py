"""Power policy: battery, charging, temperature and overrides in, a power level out.

A small state machine with hysteresis and a minimum dwell time, so a battery hovering around a
threshold does not make the engine flap between variants. Every change comes with a one-line
reason that ends up in the agent's event: a precision switch, or a policy event when the variant
stays. Time comes from an injectable clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lepton_edge.shared.messages import BatterySample, PowerLevel, SetPolicy, ThermalSample

#: Best to worst; a "lower" level saves more power.
LEVELS = (PowerLevel.PERFORMANCE, PowerLevel.BALANCED, PowerLevel.SAVER, PowerLevel.CRITICAL)
_RANK = {level: i for i, level in enumerate(LEVELS)}


class PolicySettings(BaseModel):
    """Thresholds of the power policy (`[policy]` in agent.toml)."""

    model_config = ConfigDict(extra="forbid")

    balanced_below: float = Field(
        default=80, ge=0, le=100, description="battery % under which, discharging, -> balanced"
    )
    saver_below: float = Field(default=50, ge=0, le=100, description="battery % -> saver")
    critical_below: float = Field(default=20, ge=0, le=100, description="battery % -> critical")
    thermal_saver_c: float = Field(default=75, description="°C at or above which -> saver")
    thermal_critical_c: float = Field(default=85, description="°C at or above which -> critical")
    hysteresis: float = Field(
        default=5, ge=0, description="points (battery %, °C) a reading must clear to step back up"
    )
    min_dwell_s: float = Field(
        default=30, ge=0, description="least time at a level before an automatic switch"
    )
    critical_max_fps: float | None = Field(
        default=5, gt=0, description="frame-rate cap while critical; null = no cap"
    )
    override: PowerLevel | None = Field(
        default=None, description="pin a level locally (wins over the controller's policy)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> PolicySettings:
        if not self.critical_below <= self.saver_below <= self.balanced_below:
            raise ValueError(
                "battery thresholds must satisfy critical_below <= saver_below <= balanced_below"
            )
        if self.thermal_saver_c > self.thermal_critical_c:
            raise ValueError("thermal_saver_c must not exceed thermal_critical_c")
        return self


@dataclass(frozen=True)
class Decision:
    """A level change and why it happened."""

    from_level: PowerLevel | None
    to_level: PowerLevel
    reason: str


def _num(x: float, other: float | None = None) -> str:
    """Short number; with more digits when rounding would make it look equal to `other`."""
    for digits in (1, 2, 3):
        text = f"{x:.{digits}f}".rstrip("0").rstrip(".")
        if other is None or x == other or text != _num(other):
            return text
    return text


class PowerPolicy:
    """Decides the level; call `update` with each new reading, `set_policy` on a command."""

    def __init__(
        self, settings: PolicySettings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or PolicySettings()
        self._clock = clock
        self.level: PowerLevel | None = None
        self._since = float("-inf")
        self._controller_override: PowerLevel | None = None
        self._controller_max_fps: float | None = None
        self._last: tuple[BatterySample | None, ThermalSample | None] = (None, None)

    # --- inputs --------------------------------------------------------------------------------

    def update(
        self, battery: BatterySample | None, thermal: ThermalSample | None
    ) -> Decision | None:
        """Feed the latest readings; return the switch to make, if any."""
        self._last = (battery, thermal)
        pinned = self._pinned()
        if pinned is not None:
            return self._switch(*pinned)
        target, reason = self.evaluate(battery, thermal)
        if target == self.level:
            return None
        in_dwell = self._clock() - self._since < self.settings.min_dwell_s
        # Safety wins over stability: reaching critical never waits for the dwell time.
        if self.level is not None and in_dwell and target != PowerLevel.CRITICAL:
            return None
        return self._switch(target, reason)

    def set_policy(self, command: SetPolicy) -> Decision | None:
        """The controller pins a level (or releases it) and/or caps the frame rate."""
        self._controller_override = command.override
        self._controller_max_fps = command.max_fps
        pinned = self._pinned()
        if pinned is not None:
            return self._switch(*pinned)
        # Released: go back to what the readings say, now (an operator's action, no dwell).
        target, reason = self.evaluate(*self._last)
        return self._switch(target, f"controller released override; {reason}")

    def set_override(self, level: PowerLevel | None) -> Decision | None:
        """A local, manual pin (config or CLI); wins over the controller."""
        self.settings = self.settings.model_copy(update={"override": level})
        pinned = self._pinned()
        if pinned is not None:
            return self._switch(*pinned)
        target, reason = self.evaluate(*self._last)
        return self._switch(target, f"manual override released; {reason}")

    # --- outputs -------------------------------------------------------------------------------

    def max_fps(self) -> float | None:
        """Frame-rate cap now in force (controller cap, and the critical cap while critical)."""
        caps = [self._controller_max_fps]
        if self.level == PowerLevel.CRITICAL:
            caps.append(self.settings.critical_max_fps)
        present = [c for c in caps if c is not None]
        return min(present) if present else None

    def evaluate(
        self, battery: BatterySample | None, thermal: ThermalSample | None
    ) -> tuple[PowerLevel, str]:
        """The level the readings call for, given the current level (for hysteresis)."""
        b_level, b_reason = self._battery_level(battery)
        t_level, t_reason = self._thermal_level(thermal)
        if _RANK[t_level] > _RANK[b_level]:
            return t_level, t_reason
        if _RANK[b_level] > _RANK[t_level]:
            return b_level, b_reason
        return b_level, "; ".join(r for r in (b_reason, t_reason) if r)

    # --- internals -----------------------------------------------------------------------------

    def _pinned(self) -> tuple[PowerLevel, str] | None:
        if self.settings.override is not None:
            return self.settings.override, f"manual override: {self.settings.override}"
        if self._controller_override is not None:
            return self._controller_override, f"controller policy: {self._controller_override}"
        return None

    def _switch(self, target: PowerLevel, reason: str) -> Decision | None:
        if target == self.level:
            return None
        decision = Decision(self.level, target, reason)
        self.level = target
        self._since = self._clock()
        return decision

    def _at_or_below(self, level: PowerLevel) -> bool:
        return self.level is not None and _RANK[self.level] >= _RANK[level]

    def _explain(self, level: PowerLevel, down: str, up: str) -> tuple[PowerLevel, str]:
        """Stepping down is explained by the threshold crossed, stepping up by the one cleared."""
        if self.level is not None and _RANK[level] < _RANK[self.level]:
            return level, up
        return level, down or up

    def _battery_level(self, battery: BatterySample | None) -> tuple[PowerLevel, str]:
        if battery is None:
            return PowerLevel.PERFORMANCE, "on mains power (no battery)"
        pct = battery.percent
        if battery.charging:
            return PowerLevel.PERFORMANCE, f"charging (battery {_num(pct)} %)"
        s = self.settings
        level, down, up = PowerLevel.PERFORMANCE, "", ""
        # Stepping back up needs `hysteresis` points more than stepping down. The limits only
        # decrease along this list, so the first one cleared ends the walk.
        for step, below in (
            (PowerLevel.BALANCED, s.balanced_below),
            (PowerLevel.SAVER, s.saver_below),
            (PowerLevel.CRITICAL, s.critical_below),
        ):
            limit = below + s.hysteresis if self._at_or_below(step) else below
            if pct >= limit:
                up = f"battery {_num(pct, limit)} % ≥ {_num(limit)} %, discharging"
                break
            level, down = step, f"battery {_num(pct, limit)} % < {_num(limit)} %, discharging"
        return self._explain(level, down, up)

    def _thermal_level(self, thermal: ThermalSample | None) -> tuple[PowerLevel, str]:
        if thermal is None:
            return PowerLevel.PERFORMANCE, ""
        s = self.settings
        temp = thermal.max_c
        level, down, up = PowerLevel.PERFORMANCE, "", f"temperature {_num(temp)} °C"
        for step, hot in (
            (PowerLevel.SAVER, s.thermal_saver_c),
            (PowerLevel.CRITICAL, s.thermal_critical_c),
        ):
            limit = hot - s.hysteresis if self._at_or_below(step) else hot
            if temp < limit:
                up = f"temperature {_num(temp, limit)} °C < {_num(limit)} °C"
                break
            level, down = step, f"temperature {_num(temp, limit)} °C ≥ {_num(limit)} °C"
        return self._explain(level, down, up)
