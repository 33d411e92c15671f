import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

from lepton_edge.shared.errors import MessageError
from lepton_edge.shared.hardware import GpuInfo, HardwareProfile
from lepton_edge.shared.messages import (
    MAX_PAYLOAD_BYTES,
    MESSAGE_MODELS,
    Benchmark,
    CpuSample,
    Deploy,
    Event,
    EventKind,
    MemorySample,
    PowerLevel,
    Reply,
    SetPolicy,
    State,
    Telemetry,
    decode,
    decode_device_message,
    encode,
)
from lepton_edge.shared.topics import Kind
from tests.shared.schema_strategy import from_schema

PROFILE = HardwareProfile(
    arch="x86_64",
    cpu_model="Test CPU",
    cores=2,
    features=["avx2", "avx512_vnni"],
    memory_mb=4096,
    gpu=GpuInfo(vendor="nvidia", name="T4", memory_mb=16000),
    runtimes={"onnxruntime": "1.20.0"},
    onnx_providers=["CPUExecutionProvider"],
)


def telemetry(**overrides: object) -> Telemetry:
    fields: dict[str, object] = {
        "device_id": "d1",
        "ts": 1.0,
        "seq": 7,
        "cpu": CpuSample(percent=12.5, per_core=[10.0, 15.0]),
        "memory": MemorySample(used_mb=100, available_mb=900, percent=10),
    }
    fields.update(overrides)
    return Telemetry.model_validate(fields)


EXAMPLES: list[tuple[Kind, BaseModel]] = [
    (Kind.STATE, State(device_id="d1", ts=1.0, status="online", hardware=PROFILE)),
    (Kind.STATE, State(device_id="d1", ts=1.0, status="offline")),
    (Kind.TELEMETRY, telemetry(power_level=PowerLevel.SAVER)),
    (
        Kind.EVENT,
        Event(
            device_id="d1",
            ts=1,
            seq=0,
            kind=EventKind.PRECISION_SWITCH,
            reason="battery 19 % < 20 %",
        ),
    ),
    (
        Kind.CMD,
        Deploy(
            command_id="c1",
            ts=1,
            bundle_id="b1",
            manifest_url="http://c/bundles/b1/manifest.json",
            artifact_base_url="http://c/artifacts",
            ladder={PowerLevel.PERFORMANCE: "onnx-fp32", PowerLevel.CRITICAL: "onnx-int8"},
        ),
    ),
    (Kind.CMD, SetPolicy(command_id="c2", ts=1, override=PowerLevel.SAVER)),
    (Kind.REPLY, Reply(device_id="d1", ts=1, command_id="c1", status="done")),
]


@pytest.mark.parametrize(("kind", "message"), EXAMPLES)
def test_examples_round_trip(kind: Kind, message: BaseModel) -> None:
    assert decode(kind, encode(message)) == message


@pytest.mark.parametrize(("kind", "message"), EXAMPLES)
def test_device_messages_decode_and_commands_are_refused_there(
    kind: Kind, message: BaseModel
) -> None:
    """The controller's decoder takes what devices send; a command on a device topic is refused."""
    if kind is Kind.CMD:
        with pytest.raises(MessageError, match="not a device message"):
            decode_device_message(kind, encode(message))
    else:
        assert decode_device_message(kind, encode(message)) == message


def test_commands_are_dispatched_by_type() -> None:
    payload = encode(
        Benchmark(
            command_id="c",
            ts=1,
            bundle_id="b",
            manifest_url="u",
            artifact_base_url="a",
            variant_ids=["v"],
        )
    )
    assert isinstance(decode(Kind.CMD, payload), Benchmark)


def test_extra_field_is_refused_and_named() -> None:
    data = json.loads(encode(telemetry()))
    data["surprise"] = 1
    with pytest.raises(MessageError) as err:
        decode(Kind.TELEMETRY, json.dumps(data))
    assert err.value.field == "surprise"


def test_missing_required_field_is_named() -> None:
    data = json.loads(encode(telemetry()))
    del data["seq"]
    with pytest.raises(MessageError) as err:
        decode(Kind.TELEMETRY, json.dumps(data))
    assert err.value.field == "seq"


def test_nested_field_is_named_with_its_path() -> None:
    data = json.loads(encode(telemetry()))
    data["cpu"]["percent"] = 250
    with pytest.raises(MessageError) as err:
        decode(Kind.TELEMETRY, json.dumps(data))
    assert err.value.field == "cpu.percent"


def test_unknown_command_type_is_refused() -> None:
    with pytest.raises(MessageError) as err:
        decode(Kind.CMD, json.dumps({"type": "format_disk", "command_id": "x", "ts": 1}))
    assert "format_disk" in str(err.value)


def test_other_schema_version_is_refused() -> None:
    data = json.loads(encode(telemetry()))
    data["schema_version"] = 2
    with pytest.raises(MessageError) as err:
        decode(Kind.TELEMETRY, json.dumps(data))
    assert err.value.field == "schema_version"


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(MessageError, match="exceeds"):
        decode(Kind.EVENT, b" " * (MAX_PAYLOAD_BYTES + 1))


def test_absent_gpu_is_left_out_not_zero() -> None:
    assert b"gpu" not in encode(telemetry())


def test_hardware_class_groups_equal_hardware() -> None:
    other = PROFILE.model_copy(update={"memory_mb": 8192, "agent_version": "9"})
    assert PROFILE.hardware_class() == other.hardware_class()
    no_vnni = PROFILE.model_copy(update={"features": ["avx2"]})
    assert PROFILE.hardware_class() != no_vnni.hardware_class()


# --- property tests ------------------------------------------------------------------------
# Instances are drawn from each model's exported JSON Schema, so these also prove that what
# `lepton schema` tells other languages is exactly what the parser accepts.

_SCHEMAS = {kind: TypeAdapter(MESSAGE_MODELS[kind]).json_schema() for kind in Kind}


@pytest.mark.parametrize("kind", list(Kind))
@settings(max_examples=75, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_schema_valid_payload_parses_and_round_trips(kind: Kind, data: st.DataObject) -> None:
    payload = data.draw(from_schema(_SCHEMAS[kind]))
    message = decode(kind, json.dumps(payload))
    assert decode(kind, encode(message)) == message


@pytest.mark.parametrize("kind", list(Kind))
@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=512))
def test_random_bytes_never_crash_the_parser(kind: Kind, payload: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode(kind, payload)


_finite = st.floats(allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("kind", list(Kind))
@settings(max_examples=200, deadline=None)
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.integers() | _finite | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_random_json_never_crashes_the_parser(kind: Kind, payload: object) -> None:
    with contextlib.suppress(MessageError):
        decode(kind, json.dumps(payload))


@pytest.mark.parametrize(
    ("field", "value"),
    [("ts", "NaN"), ("ts", "Infinity"), ("ts", "-Infinity"), ("cpu", '{"percent": NaN}')],
)
def test_non_finite_numbers_are_refused_on_the_wire(field: str, value: str) -> None:
    doc = json.loads(encode(telemetry()))
    raw = json.dumps(doc).replace(f'"{field}": {json.dumps(doc[field])}', f'"{field}": {value}')
    assert value in raw
    with pytest.raises(MessageError, match="not JSON"):
        decode(Kind.TELEMETRY, raw)


def test_non_finite_numbers_are_refused_in_python_too() -> None:
    from pydantic import ValidationError

    from lepton_edge.shared.manifest import OutputFidelity

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            telemetry(ts=bad)
        with pytest.raises(ValidationError):
            OutputFidelity(name="y", cosine=bad, sqnr_db=1.0)


def test_a_sequence_number_past_64_bits_is_refused() -> None:
    with pytest.raises(MessageError, match="seq"):
        decode(Kind.TELEMETRY, json.dumps(json.loads(encode(telemetry())) | {"seq": 2**63}))
