"""GPU probe: NVIDIA through NVML, Jetson through its sysfs load file, else absent (None).

An absent GPU is reported as `null`, never as 0 %, so the controller can tell "idle GPU" from
"no GPU".
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from lepton_edge.shared.hardware import GpuInfo
from lepton_edge.shared.messages import GpuSample

log = logging.getLogger(__name__)

#: Where Jetson boards expose GPU load in per mille, relative to the sysfs root.
JETSON_LOAD_GLOBS = (
    "devices/gpu.0/load",
    "devices/platform/gpu.0/load",
    "devices/platform/*.gpu/load",
    "devices/*.ga10b/load",
    "devices/*.gv11b/load",
    "devices/platform/*.ga10b/load",
)


class GpuProbe(ABC):
    source = "none"

    @abstractmethod
    def info(self) -> GpuInfo:
        """What the GPU is, for the hardware profile."""

    @abstractmethod
    def sample(self) -> GpuSample | None:
        """Current load; None when the reading failed."""


class NvmlGpu(GpuProbe):
    """First NVIDIA GPU through NVML (`nvidia-ml-py`)."""

    source = "nvml"

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()  # raises NVMLError without a driver
        self._nvml: Any = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def info(self) -> GpuInfo:
        name = self._nvml.nvmlDeviceGetName(self._handle)
        mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return GpuInfo(
            vendor="nvidia",
            name=name.decode() if isinstance(name, bytes) else str(name),
            memory_mb=int(mem.total // (1024 * 1024)),
        )

    def sample(self) -> GpuSample | None:
        n = self._nvml
        try:
            util = n.nvmlDeviceGetUtilizationRates(self._handle)
            mem = n.nvmlDeviceGetMemoryInfo(self._handle)
        except n.NVMLError as exc:
            log.warning("NVML sample failed: %s", exc)
            return None
        sample = GpuSample(
            util_percent=float(util.gpu), memory_used_mb=round(mem.used / (1024 * 1024), 1)
        )
        try:
            sample.temperature_c = float(
                n.nvmlDeviceGetTemperature(self._handle, n.NVML_TEMPERATURE_GPU)
            )
            sample.power_w = n.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        except n.NVMLError:
            pass  # many boards lack the sensors; the load is what matters
        return sample


class JetsonGpu(GpuProbe):
    """Jetson-style integrated GPU: load in per mille from one sysfs file."""

    source = "jetson"

    def __init__(self, load_file: Path, name: str = "Jetson GPU") -> None:
        self.load_file = load_file
        self.name = name

    def info(self) -> GpuInfo:
        return GpuInfo(vendor="jetson", name=self.name)

    def sample(self) -> GpuSample | None:
        try:
            per_mille = float(self.load_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return GpuSample(util_percent=min(100.0, max(0.0, per_mille / 10.0)))


def find_jetson_load(sysfs_root: Path) -> Path | None:
    for pattern in JETSON_LOAD_GLOBS:
        for path in sorted(sysfs_root.glob(pattern)):
            if path.is_file():
                return path
    return None


def _jetson_name(sysfs_root: Path) -> str:
    model = sysfs_root.parent / "proc/device-tree/model"
    try:
        return model.read_text().strip("\x00\n ") or "Jetson GPU"
    except OSError:
        return "Jetson GPU"


def detect_gpu(choice: str, sysfs_root: Path) -> GpuProbe | None:
    """The GPU plugin `choice` asks for ("auto": NVML, then Jetson sysfs), or None."""
    if choice in ("auto", "nvml"):
        try:
            return NvmlGpu()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors
            log.debug("no NVML GPU: %s", exc)
    if choice in ("auto", "jetson"):
        load = find_jetson_load(sysfs_root)
        if load is not None:
            return JetsonGpu(load, _jetson_name(sysfs_root))
    return None
