"""What a device is: the hardware profile an agent announces in its birth message.

The controller keys on-device benchmark results by `hardware_class`, so every device with the
same CPU model, inference-relevant ISA features and accelerator shares one measurement.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field

#: ISA features that change which variants run well (int8 dot products, fp16 arithmetic).
INFERENCE_FEATURES = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx",
    "neon",
    "asimddp",
    "fp16",
)


class GpuInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    vendor: str = Field(description="e.g. nvidia, jetson")
    name: str
    memory_mb: int | None = Field(default=None, ge=0)


class HardwareProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    arch: str = Field(description="machine architecture as `uname -m` prints it")
    cpu_model: str
    cores: int = Field(ge=1)
    features: list[str] = Field(default_factory=list, description="subset of INFERENCE_FEATURES")
    memory_mb: int = Field(ge=0)
    gpu: GpuInfo | None = None
    runtimes: dict[str, str] = Field(
        default_factory=dict, description="installed inference runtime -> version"
    )
    onnx_providers: list[str] = Field(default_factory=list)
    os: str = ""
    agent_version: str = ""

    def hardware_class(self) -> str:
        """Stable key for 'devices that run a variant equally fast'."""
        accel = f"{self.gpu.vendor}:{self.gpu.name}" if self.gpu else "cpu"
        feats = ",".join(sorted(f for f in self.features if f in INFERENCE_FEATURES))
        key = f"{self.arch}|{self.cpu_model}|{feats}|{accel}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]
