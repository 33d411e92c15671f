"""Every payload on the wire, as pydantic v2 models with a schema version.

`decode` turns bytes from a topic into a model or raises one `MessageError` naming the field;
it never lets extra or missing fields through, nor a NaN or an infinity (one `NaN` in a
timestamp used to pass validation and fail a whole database batch), and never raises anything
else.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lepton_edge.shared import SCHEMA_VERSION
from lepton_edge.shared.errors import MessageError
from lepton_edge.shared.hardware import HardwareProfile
from lepton_edge.shared.topics import Kind

#: Payloads larger than this are refused before parsing (a broker may allow far more).
MAX_PAYLOAD_BYTES = 256 * 1024


class PowerLevel(StrEnum):
    PERFORMANCE = "performance"
    BALANCED = "balanced"
    SAVER = "saver"
    CRITICAL = "critical"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Message(_Wire):
    schema_version: Literal[1] = SCHEMA_VERSION
    device_id: str = Field(min_length=1, max_length=64)
    ts: float = Field(description="unix time in seconds when the agent made the message")


# --- state (birth / will) ----------------------------------------------------------------


class State(_Message):
    """Retained on `…/state`: `online` with the profile after connect, `offline` as the will."""

    status: Literal["online", "offline"]
    hardware: HardwareProfile | None = None
    agent_version: str | None = None
    active_bundle: str | None = None
    active_variant: str | None = None
    power_level: PowerLevel | None = None


# --- telemetry ----------------------------------------------------------------------------


class CpuSample(_Wire):
    percent: float = Field(ge=0, le=100)
    per_core: list[float] = Field(default_factory=list)
    freq_mhz: float | None = Field(default=None, ge=0)
    load_avg: tuple[float, float, float] | None = None


class MemorySample(_Wire):
    used_mb: float = Field(ge=0)
    available_mb: float = Field(ge=0)
    percent: float = Field(ge=0, le=100)


class GpuSample(_Wire):
    """Present only when a GPU is; an absent GPU is `null`, never 0 %."""

    util_percent: float | None = Field(default=None, ge=0, le=100)
    memory_used_mb: float | None = Field(default=None, ge=0)
    temperature_c: float | None = None
    power_w: float | None = Field(default=None, ge=0)


class BatterySample(_Wire):
    percent: float = Field(ge=0, le=100)
    charging: bool
    power_w: float | None = Field(default=None, ge=0)
    voltage_v: float | None = Field(default=None, ge=0)
    source: str = Field(default="sysfs", description="sysfs, psutil or simulated")


class ThermalSample(_Wire):
    max_c: float
    zones: dict[str, float] = Field(default_factory=dict)
    source: str = "sysfs"


class InferenceStats(_Wire):
    """Engine figures over the last telemetry interval."""

    variant: str | None = None
    precision: str | None = Field(
        default=None, description="the active variant's: fp32, fp16, int8"
    )
    frames: int = Field(default=0, ge=0)
    fps: float = Field(default=0.0, ge=0)
    latency_p50_ms: float | None = Field(default=None, ge=0)
    latency_p95_ms: float | None = Field(default=None, ge=0)
    latency_p99_ms: float | None = Field(default=None, ge=0)
    deadline_misses: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    cpu_s_per_inference: float | None = Field(default=None, ge=0)
    joules_per_inference: float | None = Field(default=None, ge=0)
    frames_skipped: int = Field(
        default=0, ge=0, description="live-source frames replaced by a newer one before use"
    )
    results_published: int = Field(default=0, ge=0)
    results_suppressed: int = Field(
        default=0, ge=0, description="results held back by the rate limit or changes_only"
    )
    results_lost: int = Field(default=0, ge=0, description="QoS 0 results made while offline")


#: Sequence numbers fit a signed 64-bit column.
MAX_SEQ = 2**63 - 1


class Telemetry(_Message):
    seq: int = Field(
        ge=0, le=MAX_SEQ, description="per-device sequence number; gaps mean lost samples"
    )
    epoch: str | None = Field(
        default=None,
        max_length=32,
        description="names the sequence: a new epoch means seq started again at 0 (a new state "
        "dir), not a jump",
    )
    cpu: CpuSample
    memory: MemorySample
    gpu: GpuSample | None = None
    battery: BatterySample | None = None
    thermal: ThermalSample | None = None
    inference: InferenceStats | None = None
    power_level: PowerLevel | None = None
    active_bundle: str | None = None
    active_variant: str | None = None
    dropped: int = Field(default=0, ge=0, description="samples dropped from a full offline queue")


# --- events -------------------------------------------------------------------------------


class EventKind(StrEnum):
    PRECISION_SWITCH = "precision_switch"
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    BENCHMARK = "benchmark"
    POLICY = "policy"
    SOURCE = "source"  # a camera or stream lost, reconnected or refused
    ERROR = "error"


class Event(_Message):
    seq: int = Field(ge=0)
    kind: EventKind
    reason: str = Field(description="one human-readable line: why this happened")
    command_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


# --- commands (controller -> agent) ----------------------------------------------------------


def _type_is_required(schema: dict[str, Any]) -> None:
    """The `type` default is for Python callers; on the wire it picks the model, so it must be there."""
    schema["required"] = ["type", *schema.get("required", [])]


class _Command(_Wire):
    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra=_type_is_required
    )

    schema_version: Literal[1] = SCHEMA_VERSION
    command_id: str = Field(min_length=1, max_length=128, description="idempotency key")
    ts: float


class Deploy(_Command):
    type: Literal["deploy"] = "deploy"
    bundle_id: str
    manifest_url: str = Field(description="where the signed manifest.json is fetched from")
    artifact_base_url: str = Field(description="variant files are at {base}/{sha256}")
    ladder: dict[PowerLevel, str] = Field(description="power level -> variant id")
    rollout_id: str | None = None
    download_token: str | None = Field(
        default=None,
        description="Bearer credential for manifest_url and artifact_base_url: this device, "
        "this bundle",
    )


class Rollback(_Command):
    type: Literal["rollback"] = "rollback"
    reason: str = ""
    rollout_id: str | None = None
    from_bundle: str | None = Field(
        default=None,
        description="the bundle this undoes: an agent serving another refuses (nothing to undo)",
    )
    to_bundle: str | None = Field(
        default=None,
        description="the bundle to return to: an agent whose previous one differs refuses",
    )


class Benchmark(_Command):
    type: Literal["benchmark"] = "benchmark"
    bundle_id: str
    manifest_url: str
    artifact_base_url: str
    variant_ids: list[str] = Field(min_length=1)
    iterations: int = Field(default=50, ge=1, le=10_000)
    download_token: str | None = Field(
        default=None,
        description="Bearer credential for manifest_url and artifact_base_url: this device, "
        "this bundle",
    )


class SetPolicy(_Command):
    type: Literal["set_policy"] = "set_policy"
    override: PowerLevel | None = Field(default=None, description="pin a level; null = automatic")
    max_fps: float | None = Field(default=None, gt=0)


#: A command as Python code holds it; `Command` is the same, tagged for validation by `type`.
CommandMessage = Deploy | Rollback | Benchmark | SetPolicy
Command = Annotated[CommandMessage, Field(discriminator="type")]


# --- replies ----------------------------------------------------------------------------------


#: Statuses that end a command: the agent keeps this reply and sends it again if the command
#: id comes again.
FINAL_REPLIES = ("done", "failed", "rejected")


class Reply(_Message):
    command_id: str = Field(min_length=1, max_length=128)
    status: Literal["accepted", "done", "failed", "rejected", "duplicate"]
    detail: str = ""
    result: dict[str, Any] = Field(default_factory=dict)


class VariantTiming(_Wire):
    """One variant timed on the device itself (batch 1), or the error that stopped it."""

    p50_ms: float | None = Field(default=None, ge=0)
    p95_ms: float | None = Field(default=None, ge=0)
    p99_ms: float | None = Field(default=None, ge=0)
    error: str | None = None


class BenchmarkResult(_Wire):
    """`Reply.result` of a `benchmark` command."""

    hardware_class: str
    bundle_id: str
    timings: dict[str, VariantTiming] = Field(description="variant id -> timing")


# --- enrollment (HTTP, agent -> controller) ----------------------------------------------------


class EnrollRequest(_Wire):
    token: str = Field(min_length=8, max_length=256)
    device_id: str = Field(min_length=1, max_length=64)


class EnrollResponse(_Wire):
    """What a device gets for a valid one-time token: its broker login and the pinned key."""

    device_id: str
    mqtt_host: str
    mqtt_port: int = Field(ge=1, le=65535)
    mqtt_username: str
    mqtt_password: str
    mqtt_tls: bool = False
    controller_url: str
    controller_public_key_pem: str


# --- results (agent -> anyone) ------------------------------------------------------------------


class LabelScore(_Wire):
    index: int = Field(ge=0)
    label: str
    score: float


class Detection(_Wire):
    index: int = Field(ge=0, description="class index")
    label: str
    score: float = Field(ge=0, le=1)
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2, source pixels")


class ClassArea(_Wire):
    index: int = Field(ge=0)
    label: str
    fraction: float = Field(ge=0, le=1, description="share of the frame's pixels")


class TensorSummary(_Wire):
    name: str
    shape: list[int]
    min: float
    max: float
    mean: float


class InferenceResult(_Message):
    """One frame's answer on `…/result` (QoS 0, not retained): what the task's decoding of
    the outputs says, in the source frame's pixels. Exactly one of `top`, `detections`,
    `areas`, `values`, `tensors` is set, by `task`."""

    seq: int = Field(ge=0, description="per-agent-run counter of published results")
    frame: int = Field(ge=0, description="index of the frame in its source")
    source: str = Field(description="where the frame came from (file, camera, stream, local)")
    bundle_id: str | None = None
    variant: str | None = None
    task: Literal["classification", "detection", "segmentation", "regression", "raw"]
    latency_ms: float = Field(ge=0, description="the model run alone")
    width: int = Field(ge=0, description="source frame width (0 when it was a tensor)")
    height: int = Field(ge=0)
    top: list[LabelScore] | None = None
    detections: list[Detection] | None = None
    areas: list[ClassArea] | None = None
    values: list[float] | None = Field(default=None, description="a regression's outputs")
    tensors: list[TensorSummary] | None = None
    thumbnail_jpeg: str | None = Field(
        default=None, description="base64 JPEG of the frame with its boxes, at a low rate"
    )


# --- codec ------------------------------------------------------------------------------------

MESSAGE_MODELS: dict[Kind, Any] = {
    Kind.STATE: State,
    Kind.TELEMETRY: Telemetry,
    Kind.EVENT: Event,
    Kind.CMD: Command,
    Kind.REPLY: Reply,
    Kind.RESULT: InferenceResult,
}
_ADAPTERS = {kind: TypeAdapter(model) for kind, model in MESSAGE_MODELS.items()}

#: What a device publishes (the controller's side of the codec).
DeviceMessage = State | Telemetry | Event | Reply | InferenceResult
WireMessage = DeviceMessage | CommandMessage


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(payload: bytes | str) -> Any:
    """Strict JSON: Python's parser takes `NaN` and `Infinity`, which no field may hold."""
    try:
        return json.loads(payload, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError("", f"not JSON: {exc}") from None


def encode(message: BaseModel) -> bytes:
    """Compact JSON bytes, `null` fields left out to keep telemetry small."""
    return message.model_dump_json(exclude_none=True).encode()


@overload
def decode(kind: Literal[Kind.STATE], payload: bytes | str) -> State: ...
@overload
def decode(kind: Literal[Kind.TELEMETRY], payload: bytes | str) -> Telemetry: ...
@overload
def decode(kind: Literal[Kind.EVENT], payload: bytes | str) -> Event: ...
@overload
def decode(kind: Literal[Kind.CMD], payload: bytes | str) -> CommandMessage: ...
@overload
def decode(kind: Literal[Kind.REPLY], payload: bytes | str) -> Reply: ...
@overload
def decode(kind: Literal[Kind.RESULT], payload: bytes | str) -> InferenceResult: ...
@overload
def decode(kind: Kind, payload: bytes | str) -> WireMessage: ...
def decode(kind: Kind, payload: bytes | str) -> WireMessage:
    """Parse `payload` as the model for `kind`; raise `MessageError` naming the first bad field.

    Typed by `kind`: `decode(Kind.CMD, b)` is a `CommandMessage`, no cast needed."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError("", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    data = loads(payload)
    if isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise MessageError(
            "schema_version",
            f"got {data.get('schema_version')!r}, this side speaks {SCHEMA_VERSION}",
        )
    try:
        result: WireMessage = _ADAPTERS[Kind(kind)].validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise MessageError(field, err["msg"]) from None
    return result


def decode_device_message(kind: Kind, payload: bytes | str) -> DeviceMessage:
    """What the controller receives: state, telemetry, event or reply (never a command)."""
    if kind is Kind.CMD:
        raise MessageError("", "a command is not a device message")
    message = decode(kind, payload)
    assert not isinstance(message, CommandMessage)  # only Kind.CMD decodes to a command
    return message
