"""The simulated devices of the demo fleet: what each box claims to be and how it is powered.

Every agent really runs inference on this machine's CPU; the profile changes what it
*announces* (architecture, ISA features, memory, GPU, installed runtimes), which is what the
controller's selection reads, and how its simulated battery drains. The mix is chosen so the
ladders differ for readable reasons (no ONNX Runtime, no fp16, little memory) and so
batteries cross the power-policy thresholds within a minute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Battery:
    """A simulated battery; `time_scale` makes one real second count as that many.

    Idle drain in % per real second = idle_w * time_scale / 36 / capacity_wh: about 0.75-1.5
    here, so every battery crosses a policy threshold (80, 50, 20 %) about every 20-40 s, and
    the 50 % crossings (where ladders step from fp32 to int8) are spread between 13 s and 67 s
    after start, so some fall after the rollout however long the setup took.
    """

    start_percent: float
    capacity_wh: float = 10.0
    idle_w: float = 4.0
    w_per_cpu_s: float = 30.0
    charging: bool = False
    charge_w: float = 6.0
    time_scale: float = 60.0


@dataclass(frozen=True)
class DeviceProfile:
    kind: str  # short name, the device id is f"{kind}-{n}"
    description: str
    arch: str
    cpu_model: str
    cores: int
    features: tuple[str, ...]
    memory_mb: int
    runtimes: tuple[str, ...]  # which runtimes the box *has*: "onnxruntime", "litert"
    gpu: dict[str, Any] | None = None
    battery: Battery | None = None  # None: on mains
    fps: float = 8.0
    tags: tuple[str, ...] = field(default_factory=tuple)


#: In this order, so that even a small fleet (the tests use four) mixes runtimes (LiteRT-only,
#: ONNX-only) and power sources (draining, charging, mains).
PROFILES: tuple[DeviceProfile, ...] = (
    DeviceProfile(
        kind="pi-zero",
        description="ARM board, 512 MB, no fp16, LiteRT only, small battery",
        arch="aarch64",
        cpu_model="Cortex-A53",
        cores=4,
        features=("neon",),
        memory_mb=512,
        runtimes=("litert",),
        battery=Battery(start_percent=95, capacity_wh=4.0, idle_w=3.0),
        fps=6,
        tags=("arm", "field"),
    ),
    DeviceProfile(
        kind="laptop",
        description="x86 laptop with AVX512-VNNI on battery",
        arch="x86_64",
        cpu_model="11th Gen Intel(R) Core(TM) i7-1185G7",
        cores=4,
        features=("avx2", "avx512f", "avx512_vnni"),
        memory_mb=16384,
        runtimes=("onnxruntime", "litert"),
        battery=Battery(start_percent=100, capacity_wh=8.0, idle_w=4.8),
        fps=10,
        tags=("x86", "office"),
    ),
    DeviceProfile(
        kind="tablet",
        description="x86 tablet (AVX-VNNI), ONNX Runtime only, battery charging",
        arch="x86_64",
        cpu_model="Intel(R) N100",
        cores=4,
        features=("avx2", "avx_vnni"),
        memory_mb=8192,
        runtimes=("onnxruntime",),
        battery=Battery(start_percent=15, capacity_wh=10.0, charging=True, charge_w=5.0),
        fps=8,
        tags=("x86", "field"),
    ),
    DeviceProfile(
        kind="jetson",
        description="GPU board (Jetson-class) with fp16, on mains",
        arch="aarch64",
        cpu_model="ARMv8 Processor rev 1 (v8l)",
        cores=6,
        features=("neon", "asimddp", "fp16"),
        memory_mb=8192,
        runtimes=("onnxruntime", "litert"),
        gpu={"vendor": "jetson", "name": "Orin Nano", "memory_mb": 8192},
        fps=10,
        tags=("arm", "gpu"),
    ),
    DeviceProfile(
        kind="minipc",
        description="x86 mini PC on mains, AVX2 only",
        arch="x86_64",
        cpu_model="AMD Ryzen 7 5800U",
        cores=8,
        features=("avx2",),
        memory_mb=16384,
        runtimes=("onnxruntime", "litert"),
        fps=10,
        tags=("x86", "store"),
    ),
    DeviceProfile(
        kind="pi5",
        description="ARM board with fp16 and dot product, 4 GB, LiteRT only, on a power bank",
        arch="aarch64",
        cpu_model="Cortex-A76",
        cores=4,
        features=("neon", "asimddp", "fp16"),
        memory_mb=4096,
        runtimes=("litert",),
        battery=Battery(start_percent=100, capacity_wh=6.0, idle_w=2.7),
        fps=8,
        tags=("arm", "field"),
    ),
    DeviceProfile(
        kind="drone",
        description="ARM flight computer, 1 GB, small battery draining fastest",
        arch="aarch64",
        cpu_model="Cortex-A55",
        cores=4,
        features=("neon", "asimddp"),
        memory_mb=1024,
        runtimes=("litert", "onnxruntime"),
        battery=Battery(start_percent=70, capacity_wh=3.0, idle_w=2.7),
        fps=6,
        tags=("arm", "field"),
    ),
    DeviceProfile(
        kind="workstation",
        description="x86 workstation with AMX and fp16, on mains",
        arch="x86_64",
        cpu_model="Intel(R) Xeon(R) w5-3435X",
        cores=16,
        features=("avx2", "avx512f", "avx512_vnni", "amx", "fp16"),
        memory_mb=65536,
        runtimes=("onnxruntime", "litert"),
        fps=10,
        tags=("x86", "lab"),
    ),
)


#: The camera box: it watches a video the demo renders (moving shapes) and runs the shapes
#: detector's ladder; its battery drains through the policy's steps during the run, like the
#: others' (what it switches to is the ladder's choice: see the summary).
CAMERA = DeviceProfile(
    kind="camera",
    description="x86 camera box on battery, watching a video with the shapes detector",
    arch="x86_64",
    cpu_model="Intel(R) Core(TM) i5-1235U",
    cores=4,
    features=("avx2", "avx_vnni"),
    memory_mb=8192,
    runtimes=("onnxruntime", "litert"),
    battery=Battery(start_percent=90, capacity_wh=10.0, idle_w=4.0),
    tags=("camera", "x86"),
)
CAMERA_ID = "camera-1"


def fleet(count: int) -> list[tuple[str, DeviceProfile]]:
    """`count` (device id, profile) pairs, cycling through the profiles in a fixed order."""
    result = []
    for n in range(count):
        profile = PROFILES[n % len(PROFILES)]
        result.append((f"{profile.kind}-{n // len(PROFILES) + 1}", profile))
    return result
