"""InferenceRunner: ladder activation, power-driven precision switches, benchmark, refusals."""

from __future__ import annotations

import platform
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.agent.engine import EngineSettings
from lepton_edge.agent.power import PolicySettings
from lepton_edge.agent.runner import InferenceRunner
from lepton_edge.agent.runtimes import VariantLoadError
from lepton_edge.agent.service import Runner
from lepton_edge.shared.messages import (
    BatterySample,
    EventKind,
    PowerLevel,
    SetPolicy,
    ThermalSample,
    VariantTiming,
)
from tests.agent.inference_bundle import Bundle, fm_bundle  # noqa: F401


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[EventKind, str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, kind: EventKind, reason: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.items.append((kind, reason, data))

    def of(self, kind: EventKind) -> list[tuple[EventKind, str, dict[str, Any]]]:
        with self.lock:
            return [e for e in self.items if e[0] == kind]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def bat(pct: float, charging: bool = False) -> BatterySample:
    return BatterySample(percent=pct, charging=charging, power_w=5.0, source="simulated")


@pytest.fixture
def runner(tmp_path: Path) -> Any:
    events, clock = Events(), Clock()
    r = InferenceRunner(
        EngineSettings(source="idx", fps=200, threads=1, warmup_runs=1),
        PolicySettings(min_dwell_s=30),
        emit_event=events,
        state_dir=tmp_path,
        clock=clock,
    )
    yield r, events, clock
    r.close()


def test_power_drives_precision_switches(runner: Any, fm_bundle: Bundle) -> None:  # noqa: F811
    r, events, clock = runner
    assert isinstance(r, Runner)
    ladder = fm_bundle.ladder("tflite")
    r.update_power(bat(90), None)
    r.activate(fm_bundle.dir, fm_bundle.manifest, ladder)
    assert r.power_level() is PowerLevel.PERFORMANCE
    assert r.active_variant() == ladder[PowerLevel.PERFORMANCE]
    wait_for(lambda: r.cpu_seconds() > 0)
    clock.now += 31
    r.update_power(bat(45), None)  # straight to saver: int8
    wait_for(lambda: r.active_variant() == ladder[PowerLevel.SAVER])
    wait_for(lambda: len(events.of(EventKind.PRECISION_SWITCH)) == 1)
    _, reason, data = events.of(EventKind.PRECISION_SWITCH)[0]
    assert reason == "battery 45 % < 50 %, discharging"
    assert data["from_variant"] == ladder[PowerLevel.PERFORMANCE]
    assert data["to_variant"] == ladder[PowerLevel.SAVER]
    assert (data["from_level"], data["to_level"], data["precision"]) == (
        "performance",
        "saver",
        "int8",
    )
    stats = r.stats()
    assert stats is not None and stats.frames > 0 and stats.errors == 0
    assert stats.accuracy is not None and stats.accuracy > 0.8  # IDX frames are labeled
    assert stats.joules_per_inference is not None  # from the battery's power reading
    clock.now += 31
    r.update_power(bat(45, charging=True), ThermalSample(max_c=90, source="simulated"))
    assert r.power_level() is PowerLevel.CRITICAL  # hot wins over charging; fps capped
    assert r._engine.fps_target == 5  # type: ignore[union-attr]
    # saver and critical run the same int8 variant: a policy event, no second switch
    [(_, reason, data)] = events.of(EventKind.POLICY)
    assert "90 °C" in reason
    assert data == {
        "from_level": "saver",
        "to_level": "critical",
        "variant": ladder[PowerLevel.CRITICAL],
    }
    assert len(events.of(EventKind.PRECISION_SWITCH)) == 1


def test_level_change_without_a_bundle_is_a_policy_event(runner: Any) -> None:
    r, events, clock = runner
    r.update_power(bat(90), None)  # the first reading only sets the level
    assert events.items == []
    clock.now += 31
    r.update_power(bat(70), None)
    assert r.power_level() is PowerLevel.BALANCED
    assert events.items == [
        (
            EventKind.POLICY,
            "battery 70 % < 80 %, discharging",
            {"from_level": "performance", "to_level": "balanced", "variant": None},
        )
    ]


def test_controller_policy_pins_and_caps(runner: Any, fm_bundle: Bundle) -> None:  # noqa: F811
    r, events, _ = runner
    ladder = fm_bundle.ladder("tflite")
    r.activate(fm_bundle.dir, fm_bundle.manifest, ladder)
    r.set_policy(SetPolicy(command_id="p1", ts=0, override=PowerLevel.SAVER, max_fps=20))
    wait_for(lambda: r.active_variant() == ladder[PowerLevel.SAVER])
    assert r._engine.fps_target == 20  # type: ignore[union-attr]
    wait_for(lambda: events.of(EventKind.PRECISION_SWITCH))
    assert events.of(EventKind.PRECISION_SWITCH)[0][1] == "controller policy: saver"


def test_benchmark_times_variants_and_reports_errors(
    runner: Any,
    fm_bundle: Bundle,  # noqa: F811
) -> None:
    r, _, _ = runner
    ids = [fm_bundle.ids("onnx", "fp32")[0], fm_bundle.ids("tflite", "int8")[0]]
    timings = r.benchmark(fm_bundle.dir, fm_bundle.manifest, [*ids, "no-such-variant"], 20)
    for vid in ids:
        t = timings[vid]
        assert isinstance(t, VariantTiming) and t.error is None
        assert 0 < t.p50_ms <= t.p95_ms <= t.p99_ms  # type: ignore[operator]
    assert "no-such-variant" in timings["no-such-variant"].error


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="OpenVINO: x86-64 only")
def test_openvino_variant_is_run_switched_to_and_timed_by_the_agent(
    runner: Any,
    fm_bundle: Bundle,  # noqa: F811
) -> None:
    r, _, clock = runner
    ladder = {level: "onnx-fp32" for level in PowerLevel} | {
        PowerLevel.SAVER: "openvino-int8",
        PowerLevel.CRITICAL: "openvino-int8",
    }
    r.update_power(bat(90), None)
    r.activate(fm_bundle.dir, fm_bundle.manifest, ladder)
    clock.now += 31
    r.update_power(bat(45), None)
    wait_for(lambda: r.active_variant() == "openvino-int8")
    r.stats()  # the interval before the switch
    before = r.cpu_seconds()
    wait_for(lambda: r.cpu_seconds() > before + 0.05)
    stats = r.stats()
    assert stats is not None and stats.frames > 0 and stats.errors == 0
    assert stats.variant == "openvino-int8" and stats.precision == "int8"
    assert stats.accuracy is not None and stats.accuracy > 0.8
    timing = r.benchmark(fm_bundle.dir, fm_bundle.manifest, ["openvino-int8"], 20)
    assert timing["openvino-int8"].error is None and timing["openvino-int8"].p50_ms > 0


def replace_with(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def test_broken_variant_falls_back_and_all_broken_refuses(
    runner: Any,
    fm_bundle: Bundle,  # noqa: F811
    tmp_path: Path,
) -> None:
    r, events, _ = runner
    copy = tmp_path / "bundle"
    shutil.copytree(fm_bundle.dir, copy)
    ladder = fm_bundle.ladder("tflite")
    fp32 = ladder[PowerLevel.PERFORMANCE]
    fm_copy = Bundle(copy, fm_bundle.manifest)
    # replaced, not overwritten in place: a running LiteRT session maps its file, and
    # truncating a mapped file under it is a SIGBUS, not a test of the runner
    replace_with(fm_copy.path(fp32), b"corrupt")
    r.activate(copy, fm_bundle.manifest, ladder)  # fp32 rejected: runs the int8 step instead
    assert r.active_variant() == ladder[PowerLevel.SAVER]
    errors = events.of(EventKind.ERROR)
    assert errors and fp32 in errors[0][1] and "rejected" in errors[0][1]
    replace_with(fm_copy.path(ladder[PowerLevel.SAVER]), b"corrupt")
    other = InferenceRunner(EngineSettings(source="idx"), emit_event=events)
    with pytest.raises(VariantLoadError, match="no variant of bundle"):
        other.activate(copy, fm_bundle.manifest, ladder)
    with pytest.raises(VariantLoadError, match="lacks"):
        other.activate(copy, fm_bundle.manifest, {PowerLevel.PERFORMANCE: "nope"})
    other.close()


def test_benchmark_reports_a_signed_variant_that_computes_wrong_answers(
    runner: Any,
    fm_bundle: Bundle,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A variant that loads, runs and is signed, but whose last layer is negated: timing alone
    would rank it like any other; the probe check on the device reports it, and selection
    drops it with the reason."""
    import onnx
    from onnx import numpy_helper

    from lepton_edge.controller.selection import Measured, select
    from lepton_edge.shared.bundle import verify_bundle
    from lepton_edge.shared.manifest import sha256_file
    from lepton_edge.shared.signing import generate_key, sign_manifest
    from tests.controller.helpers import profile

    r, _, _ = runner
    manifest = fm_bundle.manifest
    assert manifest.probe is not None  # every factory bundle carries its probe set
    copy = tmp_path / "bundle"
    shutil.copytree(fm_bundle.dir, copy)
    fp32, victim = fm_bundle.ids("onnx", "fp32")[0], fm_bundle.ids("onnx", "int8")[0]
    model = onnx.load(str(fm_bundle.path(fp32)))
    inits = {t.name: t for t in model.graph.initializer}
    last = next(n for n in reversed(model.graph.node) if n.op_type in ("MatMul", "Gemm"))
    weight = inits[last.input[1]]
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
    wrong = copy / "wrong.onnx"
    onnx.save(model, str(wrong))
    digest = sha256_file(wrong)
    wrong.rename(copy / f"{digest}.onnx")
    variants = [
        v.model_copy(
            update={"sha256": digest, "size_bytes": (copy / f"{digest}.onnx").stat().st_size}
        )
        if v.id == victim
        else v
        for v in manifest.variants
    ]
    key = generate_key()
    signed = sign_manifest(manifest.model_copy(update={"variants": variants}), key)
    (copy / "manifest.json").write_text(signed.model_dump_json())
    assert verify_bundle(copy, key.public_key()) == signed  # signed and intact: only wrong

    timings = r.benchmark(copy, signed, [fp32, victim], 10)
    assert timings[fp32].error is None
    error = timings[victim].error
    assert error is not None and error.startswith("wrong answers on this device: "), error
    assert timings[victim].p50_ms is not None  # it ran fine: timing alone would keep it

    measured = {k: Measured(p50_ms=t.p50_ms, error=t.error) for k, t in timings.items()}
    hw = profile(runtimes={"onnxruntime": "1.20", "litert": "1.2"}, features=["avx2"])
    ladder = select(signed, hw, measured).ladder
    assert victim not in ladder.mapping().values()
    assert "wrong answers on this device" in ladder.rejected[victim]


def test_a_bundle_that_fails_to_start_leaves_the_running_one_serving(
    fm_bundle: Bundle,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A new bundle with another input shape needs a new engine and new frames: they are made
    beside the running engine, which is closed only once they work. Here the new model loads
    but fails its warm-up run: the old bundle goes on serving, frame after frame."""
    import hashlib

    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [3, 5])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x], [y])
    graph.initializer.append(shape)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    onnx_fp32 = fm_bundle.ids("onnx", "fp32")[0]
    variant = fm_bundle.manifest.variant(onnx_fp32).model_copy(
        update={
            "id": "bad-fp32",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
        }
    )
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / variant.filename).write_bytes(data)
    bad = fm_bundle.manifest.model_copy(
        update={"bundle_id": "bad-1", "model": None, "variants": [variant]}
    )

    r = InferenceRunner(
        EngineSettings(source="synthetic", fps=200, threads=1, warmup_runs=1), emit_event=Events()
    )
    try:
        r.activate(fm_bundle.dir, fm_bundle.manifest, {PowerLevel.PERFORMANCE: onnx_fp32})
        engine = r._engine
        assert engine is not None
        wait_for(lambda: engine.frames > 5)
        with pytest.raises(VariantLoadError, match="bad-fp32 failed its warm-up run"):
            r.activate(bad_dir, bad, {PowerLevel.PERFORMANCE: "bad-fp32"})
        assert r._engine is engine and r.active_variant() == onnx_fp32
        served = engine.frames
        wait_for(lambda: engine.frames > served + 5)  # still running frames
    finally:
        r.close()
