"""Probes against fake sysfs trees (missing, empty and garbage files) and simulated sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from lepton_edge.agent.config import (
    AgentSettings,
    SimulatedBatterySettings,
    SimulatedThermalSettings,
)
from lepton_edge.agent.hardware import build_profile, inference_features, parse_cpuinfo
from lepton_edge.agent.probes import build_probes
from lepton_edge.agent.probes.battery import SimulatedBattery, SysfsBattery, detect_battery
from lepton_edge.agent.probes.gpu import JetsonGpu, detect_gpu
from lepton_edge.agent.probes.thermal import SimulatedThermal, SysfsThermal


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


PS = "class/power_supply"


def test_sysfs_battery_reads_kernel_units(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            f"{PS}/AC/type": "Mains\n",
            f"{PS}/AC/online": "0\n",
            f"{PS}/BAT0/type": "Battery\n",
            f"{PS}/BAT0/present": "1\n",
            f"{PS}/BAT0/capacity": "57\n",
            f"{PS}/BAT0/status": "Discharging\n",
            f"{PS}/BAT0/power_now": "12500000\n",  # µW
            f"{PS}/BAT0/voltage_now": "11800000\n",  # µV
        },
    )
    sample = SysfsBattery(root).sample()
    assert sample is not None
    assert (sample.percent, sample.charging, sample.power_w, sample.voltage_v) == (
        57.0,
        False,
        12.5,
        11.8,
    )
    assert sample.source == "sysfs"


def test_sysfs_battery_power_from_current_and_voltage_and_charging(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            f"{PS}/BAT1/type": "Battery",
            f"{PS}/BAT1/capacity": "80",
            f"{PS}/BAT1/status": "Charging",
            f"{PS}/BAT1/current_now": "-2000000",  # 2 A, sign varies by driver
            f"{PS}/BAT1/voltage_now": "12000000",
        },
    )
    sample = SysfsBattery(root).sample()
    assert sample is not None and sample.charging is True
    assert sample.power_w == pytest.approx(24.0)


def test_sysfs_battery_odd_files(tmp_path: Path) -> None:
    """Empty and garbage capacity -> fall back to energy ratio; garbage power is skipped."""
    root = write_tree(
        tmp_path,
        {
            # a mouse battery (scope Device) must be ignored
            f"{PS}/hidpp_battery_0/type": "Battery",
            f"{PS}/hidpp_battery_0/scope": "Device",
            f"{PS}/hidpp_battery_0/capacity": "5",
            # absent battery slot
            f"{PS}/BAT0/type": "Battery",
            f"{PS}/BAT0/present": "0",
            f"{PS}/BAT0/capacity": "99",
            # the real one: empty capacity, garbage power, energy ratio present
            f"{PS}/BAT1/type": "Battery",
            f"{PS}/BAT1/capacity": "",
            f"{PS}/BAT1/status": "Unknown",
            f"{PS}/BAT1/power_now": "n/a",
            f"{PS}/BAT1/voltage_now": "\x00\x01garbage",
            f"{PS}/BAT1/energy_now": "25000000",
            f"{PS}/BAT1/energy_full": "50000000",
            f"{PS}/ADP1/type": "Mains",
            f"{PS}/ADP1/online": "1",
        },
    )
    sample = SysfsBattery(root).sample()
    assert sample is not None
    assert sample.percent == 50.0
    assert sample.charging is True  # status Unknown, but the adapter is online
    assert sample.power_w is None and sample.voltage_v is None


def test_sysfs_battery_garbage_everywhere_is_absent(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            f"{PS}/BAT0/type": "Battery",
            f"{PS}/BAT0/capacity": "lots",
            f"{PS}/BAT0/energy_now": "1",
            f"{PS}/BAT0/energy_full": "0",  # division by zero must not happen
        },
    )
    (tmp_path / PS / "BAT0" / "status").mkdir()  # a directory where a file should be
    probe = SysfsBattery(root)
    assert probe.sample() is None
    assert not probe.present()
    # "auto" on a tree without a usable battery: no sysfs probe chosen
    chosen = detect_battery("auto", root, None, lambda: 0.0)
    assert chosen is None or chosen.source == "psutil"


def test_capacity_above_100_is_clamped(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {f"{PS}/BAT0/type": "Battery", f"{PS}/BAT0/capacity": "101"})
    sample = SysfsBattery(root).sample()
    assert sample is not None and sample.percent == 100.0


def test_missing_tree_means_no_battery_and_no_thermal(tmp_path: Path) -> None:
    assert SysfsBattery(tmp_path).sample() is None
    assert SysfsThermal(tmp_path).sample() is None


def test_sysfs_thermal_millidegrees_and_garbage(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "class/thermal/thermal_zone0/type": "x86_pkg_temp",
            "class/thermal/thermal_zone0/temp": "61500",
            "class/thermal/thermal_zone1/type": "acpitz",
            "class/thermal/thermal_zone1/temp": "48000\n",
            "class/thermal/thermal_zone2/type": "broken",
            "class/thermal/thermal_zone2/temp": "garbage",
            "class/thermal/thermal_zone3/type": "unplugged",
            "class/thermal/thermal_zone3/temp": "-273000",  # implausible: a broken sensor
            "class/thermal/thermal_zone4/temp": "",  # empty
            "class/thermal/thermal_zone5/type": "notemp",
        },
    )
    sample = SysfsThermal(root).sample()
    assert sample is not None
    assert sample.zones == {"x86_pkg_temp": 61.5, "acpitz": 48.0}
    assert sample.max_c == 61.5


def test_jetson_gpu_load_from_sysfs(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"devices/gpu.0/load": "455\n"})
    probe = detect_gpu("jetson", root)
    assert isinstance(probe, JetsonGpu)
    sample = probe.sample()
    assert sample is not None and sample.util_percent == pytest.approx(45.5)
    assert probe.info().vendor == "jetson"
    (root / "devices/gpu.0/load").write_text("garbage")
    assert probe.sample() is None


def test_no_gpu_is_none_not_zero(tmp_path: Path) -> None:
    # This machine has no NVIDIA driver; on an empty sysfs tree nothing is found.
    assert detect_gpu("jetson", tmp_path) is None
    settings = AgentSettings(state_dir=tmp_path, probes={"sysfs_root": tmp_path, "gpu": "jetson"})
    probes = build_probes(settings)
    assert probes.gpu is None


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_simulated_battery_power_model() -> None:
    clock = FakeClock()
    cpu = [0.0]
    bat = SimulatedBattery(
        SimulatedBatterySettings(capacity_wh=10, start_percent=100, idle_w=2, w_per_cpu_s=10),
        cpu_seconds=lambda: cpu[0],
        clock=clock,
    )
    clock.t += 3600  # one idle hour: 2 Wh of 10
    s = bat.sample()
    assert s.percent == pytest.approx(80.0)
    assert s.power_w == pytest.approx(2.0)
    assert s.source == "simulated" and s.charging is False
    clock.t += 360  # 0.1 h with half a core inferring: 2 W + 10 W/(cpu-s/s) × 0.5 = 7 W
    cpu[0] += 180
    s = bat.sample()
    assert s.power_w == pytest.approx(7.0)
    assert s.percent == pytest.approx(80.0 - 7.0)
    bat.set_charging(True)  # charger: +30 W against 2 W idle for 0.01 h = +0.28 Wh
    clock.t += 36
    s = bat.sample()
    assert s.charging is True
    assert s.percent == pytest.approx(73.0 + 2.8)


def test_simulated_battery_time_scale_and_floor() -> None:
    clock = FakeClock()
    bat = SimulatedBattery(
        SimulatedBatterySettings(capacity_wh=1, start_percent=50, idle_w=3600, time_scale=10),
        clock=clock,
    )
    clock.t += 0.05  # 0.5 simulated seconds at 3600 W = 0.5 Wh = 50 %
    assert bat.sample().percent == pytest.approx(0.0)
    clock.t += 10
    assert bat.sample().percent == 0.0  # never negative
    bat.set_percent(42)
    assert bat.percent == pytest.approx(42.0)


def test_simulated_thermal_heats_with_load() -> None:
    clock = FakeClock()
    cpu = [0.0]
    th = SimulatedThermal(
        SimulatedThermalSettings(ambient_c=30, c_per_w=2, idle_w=0, w_per_cpu_s=10, tau_s=10),
        cpu_seconds=lambda: cpu[0],
        clock=clock,
    )
    assert th.sample().max_c == pytest.approx(30.0)
    clock.t += 100  # ten time constants at one full core: -> 30 + 2 × 10
    cpu[0] += 100
    assert th.sample().max_c == pytest.approx(50.0, abs=0.01)
    th.set_ambient(60)
    clock.t += 100
    assert th.sample().max_c == pytest.approx(60.0, abs=0.01)


def test_simulate_settings_choose_simulated_probes(tmp_path: Path) -> None:
    settings = AgentSettings(
        state_dir=tmp_path,
        probes={"sysfs_root": tmp_path},
        simulate={"battery": {"start_percent": 33}, "thermal": {}},
    )
    probes = build_probes(settings)
    assert probes.describe()["battery"] == "simulated"
    assert probes.describe()["thermal"] == "simulated"
    battery = probes.battery.sample() if probes.battery else None
    assert battery is not None and battery.percent == pytest.approx(33.0, abs=0.1)
    cpu = probes.cpu.sample()
    assert 0 <= cpu.percent <= 100 and len(cpu.per_core) >= 1
    assert probes.memory.sample().available_mb > 0


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx f16c avx2 avx512f avx512_vnni avx_vnni amx_tile amx_int8
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0b
"""

PI3_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
CPU part\t: 0xd03
Model\t\t: Raspberry Pi 3 Model B Rev 1.2
"""


def test_cpu_features_x86() -> None:
    model, flags = parse_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert inference_features(flags) == [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "amx",
        "fp16",
    ]


def test_cpu_features_arm() -> None:
    model, flags = parse_cpuinfo(ARM_CPUINFO)
    assert model == "ARM part 0xd0b"
    assert inference_features(flags) == ["neon", "asimddp", "fp16"]
    model, flags = parse_cpuinfo(PI3_CPUINFO)
    assert model == "Raspberry Pi 3 Model B Rev 1.2"
    assert inference_features(flags) == ["neon"]  # no dot product, no fp16 arithmetic


def test_profile_from_fake_proc_and_simulated_overrides(tmp_path: Path) -> None:
    write_tree(tmp_path, {"cpuinfo": ARM_CPUINFO})
    settings = AgentSettings(state_dir=tmp_path, probes={"proc_root": tmp_path})
    profile = build_profile(settings)
    assert profile.features == ["neon", "asimddp", "fp16"]
    assert profile.cores >= 1 and profile.memory_mb > 0
    assert "onnxruntime" in profile.runtimes  # installed in this venv, with its version
    assert "CPUExecutionProvider" in profile.onnx_providers
    assert profile.agent_version

    sim = AgentSettings(
        state_dir=tmp_path,
        simulate={
            "profile": {
                "arch": "aarch64",
                "cpu_model": "Cortex-A72",
                "cores": 4,
                "features": ["neon"],
                "memory_mb": 4096,
                "gpu": {"vendor": "jetson", "name": "Orin"},
                "runtimes": {"litert": "1.2.0"},
            }
        },
    )
    p = build_profile(sim)
    assert (p.arch, p.cpu_model, p.cores, p.features, p.memory_mb) == (
        "aarch64",
        "Cortex-A72",
        4,
        ["neon"],
        4096,
    )
    assert p.gpu is not None and p.gpu.name == "Orin"
    assert p.runtimes == {"litert": "1.2.0"}
    assert p.hardware_class() != profile.hardware_class()


def test_simulated_profile_rejects_unknown_features(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown features"):
        AgentSettings(state_dir=tmp_path, simulate={"profile": {"features": ["sse9"]}})
