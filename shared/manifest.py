"""The bundle manifest: one model version, its variants, their measurements and requirements.

A bundle directory holds `manifest.json` plus content-addressed variant files named by their
sha256. The manifest is signed (see `lepton_edge.shared.signing`) over its canonical JSON form.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lepton_edge.shared import SCHEMA_VERSION
from lepton_edge.shared.messages import PowerLevel

MANIFEST_FILE = "manifest.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks: the name and check of every variant file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ModelFormat(StrEnum):
    ONNX = "onnx"
    TFLITE = "tflite"


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


#: Runtime that loads each format on the agent.
RUNTIME_FOR_FORMAT = {ModelFormat.ONNX: "onnxruntime", ModelFormat.TFLITE: "litert"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    name: str
    shape: list[int | None] = Field(description="None for a dynamic dimension (batch)")
    dtype: str = Field(description="numpy dtype name as the runtime exposes it")


class VariantMetrics(_Strict):
    """Measured on the build host; device measurements live in the controller."""

    accuracy: float | None = Field(default=None, ge=0, le=1)
    precision_macro: float | None = Field(default=None, ge=0, le=1)
    recall_macro: float | None = Field(default=None, ge=0, le=1)
    f1_macro: float | None = Field(default=None, ge=0, le=1)
    accuracy_delta: float | None = Field(
        default=None, description="accuracy minus the fp32 baseline's, in points (0-100 scale)"
    )
    confusion: list[list[int]] | None = None
    latency_p50_ms: float | None = Field(default=None, ge=0)
    latency_p95_ms: float | None = Field(default=None, ge=0)
    latency_p99_ms: float | None = Field(default=None, ge=0)
    throughput_ips: float | None = Field(default=None, ge=0, description="inferences/s at batch 32")
    peak_memory_mb: float | None = Field(default=None, ge=0)


class Requirements(_Strict):
    runtime: str = Field(description="onnxruntime or litert")
    cpu_features: list[str] = Field(default_factory=list)
    min_memory_mb: int = Field(default=0, ge=0)


class Variant(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="e.g. onnx-int8-static")
    format: ModelFormat
    precision: Precision
    scheme: str = Field(description="how it was made, e.g. static_qdq_per_channel, dynamic")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    metrics: VariantMetrics = Field(default_factory=VariantMetrics)
    requirements: Requirements
    status: Literal["accepted", "rejected"] = "accepted"
    reason: str = Field(default="", description="why rejected, or notes on how it was made")

    @property
    def filename(self) -> str:
        """Its file's name inside a bundle directory (content-addressed)."""
        return f"{self.sha256}.{self.format.value}"


#: Manifest fields added after schema 1 shipped; out of the signed bytes while unset.
_ADDED_FIELDS = ("not_built", "input_scale")


class NotBuilt(_Strict):
    """A scheme the factory tried and did not ship: it `failed` (the whole first line of the
    error), or was `skipped` (e.g. nothing to quantize)."""

    id: str
    status: Literal["failed", "skipped"]
    reason: str


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    bundle_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")
    model_name: str
    version: str
    created_at: float
    num_classes: int = Field(ge=1)
    labels: list[str] = Field(default_factory=list)
    tolerance_points: float = Field(default=1.0, ge=0)
    baseline: dict[ModelFormat, str] = Field(
        default_factory=dict, description="format -> id of its fp32 variant"
    )
    variants: list[Variant] = Field(min_length=1)
    not_built: list[NotBuilt] = Field(
        default_factory=list, description="schemes tried and not shipped, with the reason"
    )
    input_scale: float | None = Field(
        default=None,
        gt=0,
        description="what the factory multiplied input values by (e.g. 1/255 for pixels); "
        "the agent feeds its frames the same way",
    )
    key_id: str | None = Field(default=None, description="signer's public key id")
    signature: str | None = Field(default=None, description="base64 Ed25519 over canonical_bytes")

    @model_validator(mode="after")
    def _unique_ids(self) -> Manifest:
        ids = [v.id for v in self.variants]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate variant ids in {ids}")
        return self

    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.id == variant_id:
                return v
        raise KeyError(f"bundle {self.bundle_id} has no variant {variant_id!r}")

    def accepted(self) -> list[Variant]:
        return [v for v in self.variants if v.status == "accepted"]

    def canonical_bytes(self) -> bytes:
        """The bytes the signature covers: everything but the signature, keys sorted (fields
        added since schema 1 are left out while unset, so older signed bundles still verify)."""
        exclude = {"signature"} | {f for f in _ADDED_FIELDS if not getattr(self, f)}
        data: dict[str, Any] = self.model_dump(mode="json", exclude=exclude)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


class LadderStep(_Strict):
    level: PowerLevel
    variant_id: str
    why: str = ""


class Ladder(_Strict):
    """Power level -> variant for one device, with the reason each other variant lost."""

    bundle_id: str
    steps: list[LadderStep]
    rejected: dict[str, str] = Field(default_factory=dict, description="variant id -> why not")

    def mapping(self) -> dict[PowerLevel, str]:
        return {s.level: s.variant_id for s in self.steps}
