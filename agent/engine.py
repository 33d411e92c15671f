"""The real-time inference engine: one frame loop, measured, with hot variant switching.

The loop pulls a frame, pre-processes it with its bundle's pipeline, runs the active runtime,
records latency and CPU time, and hands the outputs to a delivery thread, which reads them as
the task says and gives the answers to whoever listens: reading frame N overlaps running
frame N + 1, in order. Frame N is handed over just before frame N + 1's run (or before the
loop waits for a frame), so the delivery thread works while the runtime has released the GIL
instead of taking it from the loop in the middle of pre-processing.

A switch loads and warms the next variant in a background thread; the loop swaps it in between
two frames and closes the old one afterwards. A variant that fails to load or to run is
reported and the engine keeps (or returns to) a working one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lepton_edge.agent import runtimes
from lepton_edge.agent.pipeline import BadFrame, Geometry, Pipeline
from lepton_edge.agent.runtimes import Runtime, RuntimeOptions, VariantLoadError
from lepton_edge.agent.sources import Frame, Result, Source
from lepton_edge.shared.manifest import Variant
from lepton_edge.shared.messages import InferenceStats

log = logging.getLogger(__name__)

#: Consecutive failed frames after which the engine returns to the last working variant.
FAILURES_BEFORE_FALLBACK = 3
#: Latencies kept per stats interval; past this the oldest half goes (percentiles stay recent).
MAX_LATENCY_SAMPLES = 1 << 16
#: Frames whose outputs wait to be read and delivered; when full, the frame loop waits (no
#: result is dropped; a slow listener slows the loop instead).
DELIVERY_QUEUE = 8


class EngineSettings(BaseModel):
    """The inference engine and its frame source (`[engine]` in agent.toml)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["none", "idx", "images", "synthetic", "local", "video"] = Field(
        default="none", description="where frames come from; none = no inference runner"
    )
    source_path: Path | None = Field(
        default=None, description="IDX images file or image folder (idx: Fashion-MNIST t10k)"
    )
    video: str | None = Field(
        default=None,
        description="for source = video: a file, a V4L2 camera (/dev/video0) or a stream "
        "URL (rtsp://…, http://… MJPEG or HLS)",
    )
    video_loop: bool = Field(default=False, description="play a video file again at its end")
    video_pace: bool = Field(
        default=True, description="play a video file at its own frame rate; false = flat out"
    )
    labels_path: Path | None = Field(default=None, description="IDX labels for source_path")
    fps: float | None = Field(default=10, gt=0, description="target frame rate; null = flat out")
    batch: int = Field(default=1, ge=1, le=1024, description="images per inference")
    threads: int | None = Field(default=None, ge=1, description="runtime threads; null = auto")
    providers: list[str] | None = Field(
        default=None, description="ONNX Runtime providers to prefer; null = best installed"
    )
    optimization: Literal["disable", "basic", "extended", "all"] = "all"
    delegates: list[str] = Field(default_factory=list, description="LiteRT delegate libraries")
    openvino_device: str | None = Field(
        default=None,
        description="OpenVINO device for openvino variants (CPU, GPU, NPU); null = the best "
        "available; one that is not available falls back to CPU with a log line",
    )
    warmup_runs: int = Field(default=3, ge=0, le=1000, description="runs before a swap-in")
    keep_warm: int = Field(
        default=3,
        ge=0,
        le=8,
        description="variants kept loaded besides the active one (the ladder's), so a switch "
        "is a swap between frames; 0 = close the old variant after each switch",
    )
    local_host: str = Field(default="127.0.0.1", description="local endpoint address")
    local_port: int = Field(default=8765, ge=0, le=65535, description="0 = any free port")


@dataclass(frozen=True)
class VariantSpec:
    """Which file to run and what the manifest says about it."""

    id: str
    path: Path
    variant: Variant | None = None
    pipeline: Pipeline | None = None
    """how its bundle is fed and read; the same object for every variant of one bundle"""

    @property
    def precision(self) -> str:
        return self.variant.precision.value if self.variant is not None else "unknown"


@dataclass
class Switch:
    """One hot switch as it happened (times from `time.perf_counter`)."""

    to: VariantSpec
    reason: str
    decided_at: float
    from_id: str | None = None
    loaded_at: float | None = None
    first_frame_start: float | None = None
    first_frame_at: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def decision_to_first_frame_s(self) -> float | None:
        """From the decision until the new variant takes its first frame."""
        if self.first_frame_start is None:
            return None
        return self.first_frame_start - self.decided_at


#: A run frame on its way to the delivery thread.
_Delivery = tuple[Frame, Result, VariantSpec, Geometry | None]
#: (kind, data): "switched", "load_failed", "run_failed", "fallback".
EngineEvent = Callable[[str, dict[str, Any]], None]
OnResult = Callable[[Frame, Result], None]


@dataclass
class _Interval:
    latencies: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    errors: int = 0
    misses: int = 0
    correct: int = 0
    labeled: int = 0
    started: float = field(default_factory=time.perf_counter)


class Engine:
    """Runs frames from a source through the active variant at a target rate."""

    def __init__(
        self,
        source: Source,
        *,
        fps: float | None = None,
        options: RuntimeOptions | None = None,
        warmup_runs: int = 3,
        keep_warm: int = 0,
        on_result: OnResult | None = None,
        on_event: EngineEvent | None = None,
        power_w: Callable[[], float | None] | None = None,
    ) -> None:
        self.source = source
        self.options = options or RuntimeOptions()
        self.warmup_runs = warmup_runs
        self.keep_warm = keep_warm
        # Loaded, warmed variants not in use, by file path, least recently used first.
        self._warm: dict[Path, tuple[VariantSpec, Runtime]] = {}
        self.on_result = on_result
        self.on_event = on_event
        self._power_w = power_w
        self._fps = fps
        self._cap: float | None = None
        self._period = 1.0 / fps if fps else 0.0
        self._rt: Runtime | None = None
        self._spec: VariantSpec | None = None
        self._pending: tuple[Runtime, Switch] | None = None
        # The runtime we switched away from, kept open until the new one has run a frame.
        self._trial: tuple[Runtime | None, VariantSpec | None] | None = None
        self._switch_in_flight: Switch | None = None
        self._last_good: VariantSpec | None = None
        self._generation = 0
        self._lock = threading.Lock()
        self._interval = _Interval()
        self._thread: threading.Thread | None = None
        self._helpers: list[threading.Thread] = []  # loaders and closers, joined on close
        self._stop = threading.Event()
        self._failures = 0
        self.switches: deque[Switch] = deque(maxlen=100)  # the most recent ones
        # totals since start
        self.frames = 0
        self.errors = 0
        self.dropped = 0
        self.deadline_misses = 0
        self.cpu_s = 0.0
        #: seconds spent per stage since start, for benches: prepare, infer, read, deliver
        self.stage_s = dict.fromkeys(("prepare", "infer", "read", "deliver"), 0.0)
        self._skipped_seen: tuple[Source | None, int] = (None, 0)  # (source, its count then)
        self._deliveries: queue.Queue[_Delivery | None] = queue.Queue(DELIVERY_QUEUE)
        self._held: _Delivery | None = None  # the last run frame, handed over at the next run

    # --- control ------------------------------------------------------------------------------

    def start(self) -> Engine:
        self._stop.clear()
        with self._lock:
            self._interval = _Interval()  # loading time is not frame time
        self._thread = threading.Thread(target=self._loop, name="lepton-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the loop; False if it did not end in time (then nothing is closed under it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
            self._thread = None
        return True

    def close(self) -> None:
        if not self.stop():
            log.error("engine loop did not stop; leaving its runtime open")
            return
        for helper in list(self._helpers):
            helper.join(30)
        with self._lock:
            pending, self._pending = self._pending, None
            trial, self._trial = self._trial, None
            warm, self._warm = self._warm, {}
        others = [rt for _, rt in warm.values()]
        for rt in (self._rt, pending[0] if pending else None, trial[0] if trial else None, *others):
            if rt is not None:
                rt.close()
        self._rt = None
        self._spec = None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a finite source is exhausted (or `timeout`); True if the loop ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def set_max_fps(self, cap: float | None) -> None:
        """A cap from the power policy (critical) or the controller, on top of the target."""
        self._cap = cap
        self._update_period()

    def _update_period(self) -> None:
        rates = [r for r in (self._fps, self._cap) if r]
        self._period = 1.0 / min(rates) if rates else 0.0

    @property
    def fps_target(self) -> float | None:
        return 1.0 / self._period if self._period else None

    def active(self) -> VariantSpec | None:
        return self._spec

    def accelerator(self) -> str | None:
        rt = self._rt
        return rt.accelerator if rt is not None else None

    def input_shape(self) -> tuple[int, ...] | None:
        rt = self._rt
        return rt.input_shape() if rt is not None else None

    def load(self, spec: VariantSpec) -> None:
        """Load the first variant synchronously (raises `VariantLoadError`)."""
        rt = self._open(spec)
        with self._lock:
            old, self._rt, self._spec, self._last_good = self._rt, rt, spec, spec
        if old is not None:
            old.close()

    def switch_to(
        self, spec: VariantSpec, reason: str = "", meta: dict[str, Any] | None = None
    ) -> Switch:
        """Load and warm `spec` in the background; the loop swaps it in between two frames.
        A newer request supersedes one still loading. Failures are reported as events."""
        switch, generation = self._new_switch(spec, reason, meta)
        with self._lock:
            warm = spec.path in self._warm
        if warm:  # nothing to load: hand it to the loop now, no thread to wait for
            self._prepare(switch, generation)
        else:
            self._spawn(self._prepare, switch, generation)
        return switch

    def install(
        self, spec: VariantSpec, reason: str = "", meta: dict[str, Any] | None = None
    ) -> Switch:
        """Like `switch_to`, but loads in the caller's thread and raises `VariantLoadError`
        (a deploy wants to know at once whether the new bundle runs here)."""
        switch, generation = self._new_switch(spec, reason, meta)
        self._install(switch, generation)
        return switch

    # --- background work ----------------------------------------------------------------------

    def _spawn(self, target: Callable[..., object], *args: object) -> None:
        self._helpers = [t for t in self._helpers if t.is_alive()]
        helper = threading.Thread(target=target, args=args, name="lepton-engine-helper")
        helper.daemon = True
        self._helpers.append(helper)
        helper.start()

    def _close_later(self, rt: Runtime) -> None:
        """Close off the frame loop's thread: freeing a session can take milliseconds."""
        self._spawn(rt.close)

    def _new_switch(
        self, spec: VariantSpec, reason: str, meta: dict[str, Any] | None
    ) -> tuple[Switch, int]:
        from_id = self._spec.id if self._spec else None
        switch = Switch(spec, reason, time.perf_counter(), from_id, meta=meta or {})
        with self._lock:
            self._generation += 1
            return switch, self._generation

    def prewarm(self, specs: list[VariantSpec]) -> None:
        """Load and warm these variants in the background (up to `keep_warm`), so switching
        to them later is only a swap between frames."""
        active = self._spec.path if self._spec else None
        todo = [s for s in specs if s.path != active][: self.keep_warm]
        wanted = {s.path for s in todo}
        with self._lock:  # what is warm but no longer wanted (an older bundle) goes
            stale = [p for p in self._warm if p not in wanted]
            dropped = [self._warm.pop(p)[1] for p in stale]
        for rt in dropped:
            self._close_later(rt)
        if todo:
            self._spawn(self._prewarm, todo)

    def _prewarm(self, specs: list[VariantSpec]) -> None:
        for spec in specs:
            with self._lock:
                if spec.path in self._warm:
                    continue
            try:
                rt = self._load(spec)
            except Exception as exc:
                self._emit("load_failed", {"variant": spec.id, "error": str(exc)})
                continue
            self._retire(rt, spec)

    def _retire(self, rt: Runtime, spec: VariantSpec) -> None:
        """A variant leaves service: keep it warm (LRU, `keep_warm` of them) or close it."""
        with self._lock:
            self._warm.pop(spec.path, None)
            self._warm[spec.path] = (spec, rt)
            evict = []
            while len(self._warm) > self.keep_warm:
                oldest = next(iter(self._warm))
                evict.append(self._warm.pop(oldest)[1])
        for old in evict:
            self._close_later(old)

    def _open(self, spec: VariantSpec) -> Runtime:
        with self._lock:
            warm = self._warm.pop(spec.path, None)
        if warm is not None:
            return warm[1]
        return self._load(spec)

    def _load(self, spec: VariantSpec) -> Runtime:
        rt = runtimes.load(spec.path, spec.variant, options=self.options, variant_id=spec.id)
        try:
            sample = np.zeros((1, *rt.input_shape()), np.float32)
            for _ in range(self.warmup_runs):
                rt.run(sample)
        except Exception as exc:
            rt.close()
            raise VariantLoadError(f"variant {spec.id} failed its warm-up run: {exc}") from None
        return rt

    def _install(self, switch: Switch, generation: int) -> None:
        rt = self._open(switch.to)
        switch.loaded_at = time.perf_counter()
        with self._lock:
            if generation != self._generation:  # superseded while loading
                rt.close()
                return
            stale, self._pending = self._pending, (rt, switch)
        if stale is not None:
            stale[0].close()
        if self._thread is None or not self._thread.is_alive():
            self._swap()  # no loop running: swap now

    def _prepare(self, switch: Switch, generation: int) -> None:
        try:
            self._install(switch, generation)
        except Exception as exc:
            log.warning("variant %s failed to load: %s", switch.to.id, exc)
            self._emit(
                "load_failed", {"variant": switch.to.id, "error": str(exc), "switch": switch}
            )

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, data)
            except Exception:
                log.exception("engine event listener failed")

    # --- the frame loop -----------------------------------------------------------------------

    def _swap(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is None:
                return
            rt, switch = pending
            old, old_spec = self._rt, self._spec
            self._rt, self._spec = rt, switch.to
            if self._trial is not None and self._trial[0] is not None:
                self._close_later(self._trial[0])  # two swaps before a frame: the older trial goes
            self._trial = (old, old_spec)
        self._switch_in_flight = switch
        self.switches.append(switch)

    def _loop(self) -> None:
        deliveries: queue.Queue[_Delivery | None] = queue.Queue(DELIVERY_QUEUE)
        self._deliveries = deliveries
        deliverer = threading.Thread(
            target=self._deliver_loop, args=(deliveries,), name="lepton-results", daemon=True
        )
        deliverer.start()
        try:
            self._frames()
        finally:
            self._release()
            deliveries.put(None)  # what was run is delivered before the loop counts as ended
            deliverer.join()

    def _frames(self) -> None:
        perf, cpu = time.perf_counter, time.thread_time
        source = self.source
        next_t = perf()
        while not self._stop.is_set():
            period = self._period
            if period:
                now = perf()
                if now < next_t:
                    self._release()
                    time.sleep(next_t - now)
                elif now - next_t >= period:  # fell whole frames behind: those slots are lost
                    lost = int((now - next_t) / period)
                    self.dropped += lost
                    next_t += lost * period
                deadline = next_t + period
                next_t += period
            frame = source.read(0)
            if frame is None and not source.done:
                self._release()  # nothing ready: deliver the last frame while waiting
                frame = source.read(0.05)
            if self._pending is not None:  # checked after the wait: a switch ready by now runs it
                self._swap()
            if frame is None:
                if source.done:
                    break
                next_t = perf()
                continue
            rt, spec = self._rt, self._spec
            if rt is None or spec is None:
                self._fail(frame, "no model is active", None)
                continue
            p0 = perf()
            try:
                x, geometry = self._input(frame, spec.pipeline)
            except BadFrame as exc:
                self._fail(frame, f"frame rejected: {exc}", spec.id)
                continue
            self._release()
            c0 = cpu()
            t0 = perf()
            try:
                outputs = rt.run_all(x) if len(rt.outputs) > 1 else [rt.run(x)]
            except Exception as exc:
                self._run_failed(rt, frame, exc)
                continue
            t1 = perf()
            c1 = cpu()
            latency = t1 - t0
            late = period and t1 > deadline
            scores = self._scores(outputs, spec.pipeline)
            with self._lock:
                iv = self._interval
                iv.latencies.append(latency)
                if len(iv.latencies) >= MAX_LATENCY_SAMPLES:  # nobody asked for stats lately
                    del iv.latencies[: MAX_LATENCY_SAMPLES // 2]
                iv.cpu_s += c1 - c0
                if late:
                    iv.misses += 1
                if frame.label is not None and scores.ndim == 2:
                    iv.correct += int((scores.argmax(1) == frame.label).sum())
                    iv.labeled += len(frame.label)
            self.frames += 1
            self.cpu_s += c1 - c0
            if late:
                self.deadline_misses += 1
            self._failures = 0
            if self._trial is not None:
                self._confirm(t0, t1)
            self._hold(frame, Result(spec.id, scores, None, latency, outputs), spec, geometry)
            stage = self.stage_s
            stage["prepare"] += t0 - p0
            stage["infer"] += latency

    @staticmethod
    def _input(frame: Frame, pipeline: Pipeline | None) -> tuple[np.ndarray, Geometry | None]:
        """The model's input for `frame`: its pixels pre-processed, or its tensor checked."""
        if frame.image is not None:
            if pipeline is None:
                raise BadFrame("this variant has no pipeline to turn images into its input")
            return pipeline.prepare(frame.image)
        if frame.data is None:
            raise BadFrame("the frame holds neither pixels nor a tensor")
        if pipeline is None:
            return frame.data, None
        return pipeline.check_tensor(frame.data), None

    @staticmethod
    def _scores(outputs: list[np.ndarray], pipeline: Pipeline | None) -> np.ndarray:
        index = pipeline.postprocess.index if pipeline is not None else 0
        return outputs[index] if index < len(outputs) else outputs[0]

    def _hold(
        self, frame: Frame, result: Result, spec: VariantSpec, geometry: Geometry | None
    ) -> None:
        """Keep a run frame until the next run or wait (`_release`); earlier ones go first."""
        self._release()
        if frame.reply is not None or self.on_result is not None:
            self._held = (frame, result, spec, geometry)

    def _release(self) -> None:
        """Hand the held frame to the delivery thread."""
        held, self._held = self._held, None
        if held is not None:
            self._deliveries.put(held)

    def _deliver_loop(self, deliveries: queue.Queue[_Delivery | None]) -> None:
        while (item := deliveries.get()) is not None:
            try:
                self._answer(*item)
            except Exception:
                log.exception("delivering a result failed")

    def _answer(
        self, frame: Frame, result: Result, spec: VariantSpec, geometry: Geometry | None
    ) -> None:
        """The task's answers, for whoever waits on this frame or listens to every one."""
        t0 = time.perf_counter()
        result.pipeline = spec.pipeline
        if spec.pipeline is not None:
            try:
                result.answers = spec.pipeline.postprocess(result.outputs, geometry)
            except Exception as exc:  # a description that does not fit these outputs
                result.error = f"outputs not readable as {spec.pipeline.task.value}: {exc}"
        t1 = time.perf_counter()
        if frame.reply is not None:
            frame.reply(result)
        if self.on_result is not None:
            try:
                self.on_result(frame, result)
            except Exception:
                log.exception("result listener failed")
        self.stage_s["read"] += t1 - t0
        self.stage_s["deliver"] += time.perf_counter() - t1

    def _confirm(self, started: float, when: float) -> None:
        """The new variant ran its first frame: close the old one, report the switch."""
        with self._lock:
            trial, self._trial = self._trial, None
        switch = self._switch_in_flight
        if switch is None:
            return
        switch.first_frame_start, switch.first_frame_at = started, when
        self._last_good = switch.to
        if trial is not None and trial[0] is not None and trial[1] is not None:
            self._retire(trial[0], trial[1])
        self._emit("switched", {"switch": switch})

    def _run_failed(self, rt: Runtime, frame: Frame, exc: Exception) -> None:
        message = f"variant {rt.variant_id} failed on a frame: {exc}"
        with self._lock:
            trial, self._trial = self._trial, None
        old, old_spec = trial if trial is not None else (None, None)
        if old is not None and old_spec is not None:
            # A new variant that fails its very first frame goes straight back: the old one is
            # still open, and it runs this same frame, so the switch costs no frame.
            with self._lock:
                failed, self._rt, self._spec = self._rt, old, old_spec
            if failed is not None:
                self._close_later(failed)
            log.warning("%s; back on %s", message, old_spec.id)
            self._emit(
                "run_failed", {"variant": rt.variant_id, "error": str(exc), "fallback": old_spec.id}
            )
            try:
                x, geometry = self._input(frame, old_spec.pipeline)
                t0 = time.perf_counter()
                outputs = old.run_all(x) if len(old.outputs) > 1 else [old.run(x)]
                latency = time.perf_counter() - t0
            except Exception as again:
                self._fail(frame, f"frame rejected: {again}", rt.variant_id)
                return
            scores = self._scores(outputs, old_spec.pipeline)
            self._hold(
                frame, Result(old_spec.id, scores, None, latency, outputs), old_spec, geometry
            )
            with self._lock:  # a frame like any other in the figures
                self._interval.latencies.append(latency)
            self.frames += 1
            return
        self._fail(frame, message, rt.variant_id)
        self._failures += 1
        good = self._last_good
        if self._failures == FAILURES_BEFORE_FALLBACK and good and good.id != rt.variant_id:
            self._emit("fallback", {"variant": rt.variant_id, "error": str(exc), "to": good.id})
            self.switch_to(good, f"{rt.variant_id} failed {self._failures} frames in a row")

    def _fail(self, frame: Frame, message: str, variant: str | None) -> None:
        self.errors += 1
        with self._lock:
            self._interval.errors += 1
        if frame.reply is not None:
            frame.reply(Result(variant, error=message))

    # --- figures ------------------------------------------------------------------------------

    def stats(self) -> InferenceStats:
        """Figures since the previous call (one telemetry interval)."""
        now = time.perf_counter()
        with self._lock:
            iv, self._interval = self._interval, _Interval(started=now)
        n = len(iv.latencies)
        elapsed = max(now - iv.started, 1e-9)
        source, seen = self._skipped_seen
        skipped = self.source.skipped
        stats = InferenceStats(
            frames_skipped=skipped - seen if source is self.source else skipped,
            variant=self._spec.id if self._spec else None,
            precision=self._spec.precision if self._spec and self._spec.variant else None,
            frames=n,
            fps=n / elapsed,
            deadline_misses=iv.misses,
            errors=iv.errors,
            accuracy=iv.correct / iv.labeled if iv.labeled else None,
            cpu_s_per_inference=iv.cpu_s / n if n else None,
        )
        self._skipped_seen = (self.source, skipped)
        if n:
            ms = np.percentile(np.asarray(iv.latencies) * 1e3, [50, 95, 99])
            stats.latency_p50_ms, stats.latency_p95_ms, stats.latency_p99_ms = map(float, ms)
            watts = self._power_w() if self._power_w is not None else None
            if watts is not None:
                stats.joules_per_inference = watts * elapsed / n
        return stats
