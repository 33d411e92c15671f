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
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TensorSpec(_Strict):
    name: str
    shape: list[int | None] = Field(description="None for a dynamic dimension (batch)")
    dtype: str = Field(description="numpy dtype name as the runtime exposes it")


class Task(StrEnum):
    """What the model's outputs mean: how they are judged, decoded and published."""

    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"
    REGRESSION = "regression"
    RAW = "raw"  # anything else: embeddings, audio frames, several heads


class ImageInput(_Strict):
    """How a frame becomes this input (the Frigate-detector fields): resized to `size`
    (height, width) by `resize`, channels in `pixel_format`, laid out as `layout`, then
    `value * scale`, minus `mean`, over `std` (per channel, after scaling)."""

    layout: Literal["NHWC", "NCHW"] = "NHWC"
    pixel_format: Literal["rgb", "bgr", "gray"] = "rgb"
    size: tuple[int, int] = Field(description="(height, width) the model takes")
    resize: Literal["stretch", "letterbox"] = "stretch"
    scale: float = Field(default=1.0, gt=0)
    mean: list[float] = Field(default_factory=list)
    std: list[float] = Field(default_factory=list)


class ModelInput(TensorSpec):
    """An input as the model file has it, the concrete shape it was built and timed at, and
    for an image input how frames are turned into it."""

    build_shape: list[int] = Field(default_factory=list, description="fed shape, no unknowns")
    image: ImageInput | None = None


class DetectionDecoding(_Strict):
    """Which outputs hold the detections and how to read them.

    `boxes_scores`: `boxes` (1, A, 4) and `scores` (1, A, classes) per anchor, boxes already
    decoded (SSD post-box-decoder, most exported detectors). `yolo`: one output (1, 4 +
    classes, A) or (1, A, 4 + classes), cx/cy/w/h, class scores after the box (YOLOv5u/v8).
    Boxes are in `box_format`, normalized to [0, 1] or in input pixels."""

    kind: Literal["boxes_scores", "yolo"] = "boxes_scores"
    boxes: str = Field(description="output name holding boxes (for yolo: the one output)")
    scores: str | None = Field(default=None, description="output name holding class scores")
    box_format: Literal["xyxy", "yxyx", "cxcywh"] = "xyxy"
    normalized: bool = True
    score_threshold: float = Field(default=0.25, ge=0, le=1)
    nms_iou: float = Field(default=0.45, gt=0, le=1)
    max_detections: int = Field(default=100, ge=1)


class SegmentationDecoding(_Strict):
    """Which output holds the mask: per-pixel class scores along `class_axis`, or one
    channel of foreground probability cut at `threshold`."""

    output: str
    class_axis: int = Field(default=-1, description="axis of the class scores in the output")
    threshold: float = Field(default=0.5, description="for a one-channel mask")


class ModelDescription(_Strict):
    """What the model is, for the factory's judging and the agent's pre/post-processing;
    nothing about it is guessed at run time."""

    task: Task
    inputs: list[ModelInput] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    output: str | None = Field(default=None, description="classification/regression output")
    detection: DetectionDecoding | None = None
    segmentation: SegmentationDecoding | None = None

    @model_validator(mode="after")
    def _decoding_names(self) -> ModelDescription:
        names = {o.name for o in self.outputs}
        named = [self.output]
        if self.detection:
            named += [self.detection.boxes, self.detection.scores]
        if self.segmentation:
            named.append(self.segmentation.output)
        unknown = sorted({n for n in named if n is not None} - names)
        if unknown:
            raise ValueError(f"no output named {unknown}; the model has {sorted(names)}")
        if self.task is Task.DETECTION and self.detection is None:
            raise ValueError("a detection model needs its detection decoding")
        if self.task is Task.SEGMENTATION and self.segmentation is None:
            raise ValueError("a segmentation model needs its segmentation output")
        return self

    def index(self, name: str) -> int:
        """Position of output `name` (outputs come in this order in every format)."""
        return [o.name for o in self.outputs].index(name)


class Tolerance(_Strict):
    """How far a variant may be from fp32 and still ship. Always checked: every output's
    cosine similarity to fp32 and the task agreement with fp32's answers; with labels, the
    task metric's drop in points (accuracy, mAP@0.5, mIoU) or the RMSE's rise."""

    points: float = Field(default=1.0, ge=0, description="metric drop vs fp32, 0-100 scale")
    min_cosine: float = Field(default=0.98, ge=-1, le=1)
    min_agreement: float = Field(
        default=0.97,
        ge=0,
        le=1,
        description="top-1 agreement, mAP@0.5 against fp32's detections, or mask IoU",
    )
    max_rmse_rise: float = Field(default=0.05, ge=0, description="relative, for regression")
    architecture_points: float | None = Field(
        default=None,
        ge=0,
        description="labelled metric a smaller architecture (pruned, student) may lose vs the "
        "base model's fp32, in points; its own quantized variants are held to `points` vs its "
        "fp32",
    )


class OutputFidelity(_Strict):
    """One output of a variant against the same format's fp32 on the same inputs."""

    name: str
    cosine: float
    sqnr_db: float


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
    # Since the model description (schema 1 bundles without them still verify):
    latency_spread: float | None = Field(
        default=None, ge=1, description="max/min of the timing rounds' medians"
    )
    fidelity: list[OutputFidelity] | None = None
    agreement: float | None = Field(
        default=None, description="task agreement with fp32 (see Tolerance.min_agreement)"
    )
    map50: float | None = Field(default=None, ge=0, le=1)
    map50_95: float | None = Field(default=None, ge=0, le=1)
    miou: float | None = Field(default=None, ge=0, le=1)
    mae: float | None = Field(default=None, ge=0)
    rmse: float | None = Field(default=None, ge=0)
    metric_delta: float | None = Field(
        default=None, description="task metric minus fp32's, in points (mAP, mIoU) when labelled"
    )

    def quality(self) -> float | None:
        """The figure selection ranks by: the labelled task metric, else agreement with fp32."""
        for value in (self.accuracy, self.map50, self.miou, self.agreement):
            if value is not None:
                return value
        return None


#: VariantMetrics fields added after schema 1; out of the signed bytes while unset.
_ADDED_METRICS = (
    "latency_spread",
    "fidelity",
    "agreement",
    "map50",
    "map50_95",
    "miou",
    "mae",
    "rmse",
    "metric_delta",
)


class ProbeSet(_Strict):
    """A few evaluation inputs and each format's fp32 outputs on them, in a bundle file
    (`.npz`: `input{i}` and `{format}.output{j}`), for the on-device correctness check."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    samples: int = Field(ge=1)

    @property
    def filename(self) -> str:
        return f"{self.sha256}.npz"


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
    architecture: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="which model it was made from: base, or one derived from it (pruned50, "
        "student25); unset in bundles made before",
    )
    parameters: int | None = Field(default=None, ge=0, description="weights in the model")
    macs: int | None = Field(default=None, ge=0, description="multiply-accumulates per sample")

    @property
    def filename(self) -> str:
        """Its file's name inside a bundle directory (content-addressed)."""
        return f"{self.sha256}.{self.format.value}"


#: Manifest fields added after schema 1 shipped; out of the signed bytes while unset.
_ADDED_FIELDS = ("not_built", "input_scale", "model", "tolerance", "probe")
#: Variant and tolerance fields added since; likewise.
_ADDED_VARIANT_FIELDS = ("architecture", "parameters", "macs")
_ADDED_TOLERANCE_FIELDS = ("architecture_points",)


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
    model: ModelDescription | None = Field(default=None, description="task, I/O, processing")
    tolerance: Tolerance | None = None
    probe: ProbeSet | None = None
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
        for variant in data["variants"]:
            metrics = variant["metrics"]
            for name in _ADDED_METRICS:
                if metrics.get(name) is None:
                    metrics.pop(name, None)
            for name in _ADDED_VARIANT_FIELDS:
                if variant.get(name) is None:
                    variant.pop(name, None)
        for name in _ADDED_TOLERANCE_FIELDS:
            if data.get("tolerance") and data["tolerance"].get(name) is None:
                data["tolerance"].pop(name, None)
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
