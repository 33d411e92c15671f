"""The engine on real runtimes: figures, pacing, hot switches under load, failing variants."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepton_edge.agent.engine import Engine, VariantSpec
from lepton_edge.agent.runner import pipeline_for
from lepton_edge.agent.runtimes import RuntimeOptions, VariantLoadError
from lepton_edge.agent.sources import ArraySource, Frame, Result, idx_source
from tests.agent.inference_bundle import Bundle, fm_bundle, fm_images  # noqa: F401

OPTS = RuntimeOptions(threads=1)


def spec(bundle: Bundle, vid: str) -> VariantSpec:
    pipeline = pipeline_for(bundle.dir, bundle.manifest, vid)
    return VariantSpec(vid, bundle.path(vid), bundle.manifest.variant(vid), pipeline)


def other_shape_model(path: Path) -> Path:
    """A real ONNX model that loads and warms fine but expects (N, 32): 28x28 frames fail."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [32, 10], np.ones(320, np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class Recorder:
    def __init__(self) -> None:
        self.results: list[Result] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def result(self, frame: Frame, result: Result) -> None:
        self.results.append(result)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((kind, data))

    def kinds(self) -> list[str]:
        with self.lock:
            return [k for k, _ in self.events]


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_labeled_run_reports_accuracy_and_figures(fm_bundle: Bundle) -> None:  # noqa: F811
    rec = Recorder()
    engine = Engine(idx_source(loop=False, limit=2000), options=OPTS, on_result=rec.result)
    engine.load(spec(fm_bundle, "tflite-fp32"))
    engine.start()
    assert engine.wait(60)
    stats = engine.stats()
    assert stats.frames == 2000 == len(rec.results) == engine.frames
    assert stats.variant == "tflite-fp32" and stats.errors == 0
    _, y = fm_images(2000)
    expected = float((np.concatenate([r.scores for r in rec.results]).argmax(1) == y).mean())  # type: ignore[misc]
    assert stats.accuracy == pytest.approx(expected) and stats.accuracy > 0.85
    assert stats.latency_p50_ms is not None and stats.latency_p99_ms is not None
    assert 0 < stats.latency_p50_ms <= stats.latency_p95_ms <= stats.latency_p99_ms  # type: ignore[operator]
    assert stats.cpu_s_per_inference is not None and stats.cpu_s_per_inference > 0
    assert stats.joules_per_inference is None  # no power reading on this machine
    empty = engine.stats()  # figures are per interval
    assert empty.frames == 0 and empty.latency_p50_ms is None
    engine.close()


def test_target_rate_paces_frames(fm_bundle: Bundle) -> None:  # noqa: F811
    x, _ = fm_images(64)
    engine = Engine(ArraySource(x), fps=40, options=OPTS)
    engine.load(spec(fm_bundle, "tflite-fp32"))
    engine.start()
    time.sleep(0.5)
    engine.stop()
    # pacing never runs ahead of the target (it may fall behind on a busy machine)
    assert 5 <= engine.frames <= 0.5 * 40 + 2
    engine.set_max_fps(5)
    assert engine.fps_target == 5
    engine.set_max_fps(None)
    assert engine.fps_target == 40
    engine.close()


def test_joules_per_inference_from_a_power_reading(fm_bundle: Bundle) -> None:  # noqa: F811
    engine = Engine(idx_source(loop=False, limit=500), options=OPTS, power_w=lambda: 4.0)
    engine.load(spec(fm_bundle, "tflite-fp32"))
    started = time.perf_counter()
    engine.start()
    engine.wait(60)
    elapsed = time.perf_counter() - started
    stats = engine.stats()
    assert stats.joules_per_inference is not None
    assert 0 < stats.joules_per_inference <= 4.0 * (elapsed + 0.5) / 500
    engine.close()


def test_hot_switch_under_load_drops_no_frame(fm_bundle: Bundle) -> None:  # noqa: F811
    rec = Recorder()
    n = 6000
    engine = Engine(
        idx_source(loop=False, limit=n),
        options=OPTS,
        warmup_runs=1,
        on_result=rec.result,
        on_event=rec.event,
    )
    ladder = fm_bundle.ladder("tflite")
    variants = [ladder[lvl] for lvl in ladder] + [fm_bundle.ids("onnx", "fp32")[0]]
    ids = list(dict.fromkeys(variants))
    engine.load(spec(fm_bundle, ids[0]))
    engine.start()
    switches = 0
    for i in range(12):
        if engine.wait(0):
            break
        target = ids[(i + 1) % len(ids)]
        before = rec.kinds().count("switched")
        engine.switch_to(spec(fm_bundle, target), "test")
        wait_for(lambda b=before: rec.kinds().count("switched") > b or engine.wait(0))  # type: ignore[misc]
        switches += 1
    assert engine.wait(120)
    engine.close()
    assert switches >= 3, "the source ran out before the switches: raise n"
    # every frame of the finite source was answered, none failed, several variants ran them
    assert len(rec.results) == n == engine.frames
    assert engine.errors == 0 and engine.dropped == 0
    seen = {r.variant for r in rec.results}
    assert len(seen) >= 2
    done = [d["switch"] for k, d in rec.events if k == "switched"]
    assert all(s.first_frame_at is not None and s.first_frame_at >= s.decided_at for s in done)


def test_variant_that_fails_to_load_is_reported_and_skipped(
    fm_bundle: Bundle,  # noqa: F811
    tmp_path: Path,
) -> None:
    rec = Recorder()
    x, _ = fm_images(64)
    engine = Engine(ArraySource(x), fps=200, options=OPTS, on_event=rec.event)
    engine.load(spec(fm_bundle, "tflite-fp32"))
    engine.start()
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\x00" * 100)
    engine.switch_to(VariantSpec("tflite-broken", broken), "test")
    wait_for(lambda: "load_failed" in rec.kinds())
    frames = engine.frames
    wait_for(lambda: engine.frames > frames + 5)  # still running, on the old variant
    assert engine.active().id == "tflite-fp32"  # type: ignore[union-attr]
    _, data = rec.events[0]
    assert "tflite-broken" in data["error"] and "rejected" in data["error"]
    engine.close()
    with pytest.raises(VariantLoadError):
        Engine(ArraySource(x)).load(VariantSpec("tflite-broken", broken))


def test_variant_that_fails_to_run_falls_back_without_losing_the_frame(
    fm_bundle: Bundle,  # noqa: F811
    tmp_path: Path,
) -> None:
    rec = Recorder()
    x, _ = fm_images(64)
    engine = Engine(ArraySource(x), fps=200, options=OPTS, on_event=rec.event, on_result=rec.result)
    engine.load(spec(fm_bundle, "tflite-fp32"))
    engine.start()
    wrong = VariantSpec("onnx-wrong-shape", other_shape_model(tmp_path / "wrong.onnx"))
    engine.switch_to(wrong, "test")
    wait_for(lambda: "run_failed" in rec.kinds())
    frames = engine.frames
    wait_for(lambda: engine.frames > frames + 5)
    engine.close()
    data = dict(rec.events)["run_failed"]
    assert data["variant"] == "onnx-wrong-shape" and data["fallback"] == "tflite-fp32"
    assert engine.errors == 0  # the failing frame was rerun on the old variant
    assert {r.variant for r in rec.results} == {"tflite-fp32"}
    # ... and it counts like any other: in the results and in the figures
    assert len(rec.results) == engine.frames == engine.stats().frames


@pytest.mark.parametrize("keep_warm", [0, 1])
def test_switching_back_reuses_a_warm_variant(fm_bundle: Bundle, keep_warm: int) -> None:  # noqa: F811
    rec = Recorder()
    x, _ = fm_images(64)
    engine = Engine(ArraySource(x), fps=200, options=OPTS, keep_warm=keep_warm, on_event=rec.event)
    a, b = spec(fm_bundle, "tflite-fp32"), spec(fm_bundle, fm_bundle.ids("tflite", "int8")[0])
    engine.load(a)
    first = engine._rt
    engine.start()
    for n, target in enumerate((b, a), start=1):
        engine.switch_to(target, "test")
        wait_for(lambda n=n: rec.kinds().count("switched") == n)  # type: ignore[misc]
    assert engine.active() == a
    assert (engine._rt is first) == bool(keep_warm)  # warm: the very same loaded session
    assert len(engine._warm) == keep_warm
    engine.prewarm([b])
    wait_for(lambda: len(engine._warm) == keep_warm and (not keep_warm or b.path in engine._warm))
    engine.prewarm([])  # a new ladder without b: b is closed
    assert not engine._warm
    engine.close()
