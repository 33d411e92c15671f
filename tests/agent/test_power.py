"""Power policy: thresholds, hysteresis, dwell, charging, thermal and overrides (fake clock)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lepton_edge.agent.power import PolicySettings, PowerPolicy
from lepton_edge.shared.messages import BatterySample, PowerLevel, SetPolicy, ThermalSample

P, B, S, C = PowerLevel.PERFORMANCE, PowerLevel.BALANCED, PowerLevel.SAVER, PowerLevel.CRITICAL


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bat(pct: float, charging: bool = False) -> BatterySample:
    return BatterySample(percent=pct, charging=charging, source="simulated")


def hot(c: float) -> ThermalSample:
    return ThermalSample(max_c=c, source="simulated")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def policy(clock: Clock, **kw: object) -> PowerPolicy:
    return PowerPolicy(PolicySettings(min_dwell_s=0, **kw), clock=clock)  # type: ignore[arg-type]


def test_levels_follow_the_battery_with_reasons(clock: Clock) -> None:
    p = policy(clock)
    first = p.update(bat(95), None)
    assert first is not None and first.to_level is P and first.from_level is None
    d = p.update(bat(79), None)
    assert d is not None and (d.from_level, d.to_level) == (P, B)
    assert d.reason == "battery 79 % < 80 %, discharging"
    assert p.update(bat(49.5), None).to_level is S  # type: ignore[union-attr]
    d = p.update(bat(19), None)
    assert d is not None and d.to_level is C and d.reason == "battery 19 % < 20 %, discharging"
    assert p.update(bat(18), None) is None  # no change, no event


def test_hysteresis_stops_flapping_at_a_threshold(clock: Clock) -> None:
    p = policy(clock, hysteresis=5)
    p.update(bat(60), None)
    assert p.level is B
    assert p.update(bat(49), None).to_level is S  # type: ignore[union-attr]
    for reading in (51, 49, 52, 54.9, 50):  # noise around 50 %: stays in saver
        assert p.update(bat(reading), None) is None
        assert p.level is S
    d = p.update(bat(55), None)
    assert d is not None and d.to_level is B and d.reason == "battery 55 % ≥ 55 %, discharging"


def test_no_hysteresis_flaps(clock: Clock) -> None:
    # the same readings without hysteresis do switch back: the test above can fail
    p = policy(clock, hysteresis=0)
    p.update(bat(49), None)
    assert p.update(bat(51), None).to_level is B  # type: ignore[union-attr]


def test_minimum_dwell(clock: Clock) -> None:
    p = PowerPolicy(PolicySettings(min_dwell_s=30), clock=clock)
    p.update(bat(90), None)
    clock.now += 1
    assert p.update(bat(79), None) is None  # 1 s after the last switch: wait
    clock.now += 28.9
    assert p.update(bat(78), None) is None
    clock.now += 0.2
    d = p.update(bat(78), None)
    assert d is not None and d.to_level is B
    clock.now += 1
    # reaching critical is a safety matter and never waits
    assert p.update(bat(10), None).to_level is C  # type: ignore[union-attr]


def test_charging_goes_to_performance(clock: Clock) -> None:
    p = policy(clock)
    p.update(bat(15), None)
    assert p.level is C and p.max_fps() == 5
    d = p.update(bat(15, charging=True), None)
    assert d is not None and d.to_level is P and d.reason == "charging (battery 15 %)"
    assert p.max_fps() is None
    assert p.update(None, None) is None  # on mains with no battery: still performance


def test_thermal_steps_down_even_on_mains(clock: Clock) -> None:
    p = policy(clock, thermal_saver_c=75, thermal_critical_c=85, hysteresis=5)
    p.update(bat(100, charging=True), hot(50))
    d = p.update(bat(100, charging=True), hot(76))
    assert d is not None and d.to_level is S and d.reason == "temperature 76 °C ≥ 75 °C"
    assert p.update(None, hot(86)).to_level is C  # type: ignore[union-attr]
    assert p.update(None, hot(82)) is None  # within hysteresis of 85
    assert p.update(None, hot(79.9)).to_level is S  # type: ignore[union-attr]
    assert p.update(None, hot(72)) is None  # still within 5 °C of 75
    d = p.update(None, hot(69))
    assert d is not None and d.to_level is P and "temperature 69 °C < 70 °C" in d.reason


def test_worse_of_battery_and_thermal_wins(clock: Clock) -> None:
    p = policy(clock)
    assert p.update(bat(30), hot(60)).to_level is S  # type: ignore[union-attr]
    assert p.update(bat(30), hot(90)).to_level is C  # type: ignore[union-attr]


def test_controller_policy_and_manual_override(clock: Clock) -> None:
    p = PowerPolicy(PolicySettings(min_dwell_s=30), clock=clock)
    p.update(bat(90), None)
    d = p.set_policy(SetPolicy(command_id="c1", ts=0, override=PowerLevel.SAVER, max_fps=10))
    assert d is not None and d.to_level is S and d.reason == "controller policy: saver"
    assert p.max_fps() == 10
    assert p.update(bat(90), None) is None  # pinned: readings do not move it
    d = p.set_override(PowerLevel.CRITICAL)  # a local pin wins over the controller's
    assert d is not None and d.to_level is C and p.max_fps() == 5
    d = p.set_override(None)
    assert d is not None and d.to_level is S
    d = p.set_policy(SetPolicy(command_id="c2", ts=0))  # released: back to the readings now
    assert d is not None and d.to_level is P and "controller released override" in d.reason
    assert p.max_fps() is None


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        PolicySettings(saver_below=90, balanced_below=80)
    with pytest.raises(ValidationError):
        PolicySettings(hysteresis=-1)
    with pytest.raises(ValidationError):
        PolicySettings(tresholds=1)  # type: ignore[call-arg]


def test_reason_never_reads_as_equal(clock: Clock) -> None:
    p = policy(clock)
    p.update(bat(60), None)
    d = p.update(bat(49.96), None)
    assert d is not None and d.reason == "battery 49.96 % < 50 %, discharging"
