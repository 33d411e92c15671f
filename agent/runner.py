"""The agent's inference side: engine + power policy + frame source, behind the `Runner`
protocol of `lepton_edge.agent.service`.

The agent hands it verified bundles and power readings; it runs frames, turns policy
decisions into hot variant switches, and reports each switch as an event with its reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_edge.agent import runtimes
from lepton_edge.agent.engine import Engine, EngineSettings, OnResult, VariantSpec
from lepton_edge.agent.local_api import LocalEndpoint, ModelInfo
from lepton_edge.agent.pipeline import Pipeline
from lepton_edge.agent.power import PolicySettings, PowerPolicy
from lepton_edge.agent.runtimes import RuntimeOptions, VariantLoadError
from lepton_edge.agent.sources import (
    ArraySource,
    NoFrames,
    QueueSource,
    Source,
    SyntheticSource,
    idx_source,
    image_dir_source,
)
from lepton_edge.agent.sources.video import SourceEvent, VideoSource
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.hardware import HardwareProfile
from lepton_edge.shared.manifest import Manifest
from lepton_edge.shared.messages import (
    BatterySample,
    EventKind,
    InferenceStats,
    PowerLevel,
    SetPolicy,
    ThermalSample,
    VariantTiming,
)
from lepton_edge.shared.probe import load_probe, wrong_answers

if TYPE_CHECKING:
    from lepton_edge.agent.config import AgentSettings

log = logging.getLogger(__name__)

EmitEvent = Callable[[EventKind, str, dict[str, Any]], None]


#: Sources of pixels: the bundle's pipeline fits their frames to any model.
IMAGE_SOURCES = ("idx", "images", "video", "local")


def make_source(
    settings: EngineSettings,
    input_shape: tuple[int, ...],
    labels: list[str] | None = None,
    limit: int | None = None,
    *,
    pipeline: Pipeline | None = None,
    on_event: SourceEvent | None = None,
) -> Source:
    """The frame source the settings name, shaped for the model; `limit` frames, or endless."""
    kind = settings.source
    source: ArraySource
    if kind == "video":
        if not settings.video:
            raise UserError(
                "engine.source = video needs engine.video: a file, /dev/videoN or a stream URL"
            )
        return VideoSource(
            settings.video, loop=settings.video_loop, pace=settings.video_pace, on_event=on_event
        )
    if kind == "idx":
        source = idx_source(settings.source_path, settings.labels_path, batch=settings.batch)
    elif kind == "images":
        if settings.source_path is None:
            raise UserError("engine.source = images needs engine.source_path: a folder of images")
        pre = pipeline.preprocess if pipeline is not None else None
        size = pre.spec.size if pre is not None else (input_shape[0], input_shape[1])
        channels = (
            pre.channels if pre is not None else (input_shape[2] if len(input_shape) > 2 else 1)
        )
        source = image_dir_source(
            settings.source_path, size, labels, channels=channels, batch=settings.batch
        )
    elif kind == "synthetic":
        source = SyntheticSource(input_shape, batch=settings.batch)
    else:
        raise UserError(f"engine.source = {kind} makes no frames; use idx, images or synthetic")
    source.limit = limit
    return source


def pipeline_for(
    bundle_dir: Path,
    manifest: Manifest,
    vid: str,
    options: RuntimeOptions | None = None,
    top_k: int = 3,
) -> Pipeline:
    """How a bundle is fed and read, once for its whole ladder (from the description, or
    for an older bundle from the model's tensors); `VariantLoadError` when it cannot be."""
    variant = manifest.variant(vid)
    inputs, outputs = variant.inputs, variant.outputs
    if manifest.model is not None:
        inputs, outputs = list(manifest.model.inputs), manifest.model.outputs
    if not inputs or not outputs:
        rt = runtimes.load(bundle_dir / variant.filename, variant, options=options)
        inputs, outputs = rt.inputs, rt.outputs
        rt.close()
    try:
        return Pipeline.for_manifest(manifest, inputs, outputs, top_k)
    except UserError as exc:
        raise VariantLoadError(str(exc)) from None


class InferenceRunner:
    """One device's inference: thread-safe, called from the agent's threads."""

    def __init__(
        self,
        engine: EngineSettings,
        policy: PolicySettings | None = None,
        *,
        emit_event: EmitEvent,
        state_dir: Path | None = None,
        profile: HardwareProfile | None = None,
        clock: Callable[[], float] = time.monotonic,
        source: Source | None = None,
        on_result: OnResult | None = None,
        top_k: int = 3,
    ) -> None:
        self.settings = engine
        self.on_result = on_result
        self.top_k = top_k
        self._pipeline: Pipeline | None = None  # the active bundle's
        self.policy = PowerPolicy(policy, clock=clock)
        self._emit_event = emit_event
        self.options = RuntimeOptions(
            threads=engine.threads,
            providers=engine.providers,
            optimization=engine.optimization,
            cache_dir=state_dir / "cache" / "runtimes" if state_dir is not None else None,
            delegates=list(engine.delegates),
            has_gpu=(profile.gpu is not None) if profile is not None else None,
            device=engine.openvino_device,
        )
        self._lock = threading.RLock()
        self._source = source
        self._engine: Engine | None = None
        self._bundle: tuple[Path, Manifest] | None = None
        self._ladder: dict[PowerLevel, str] = {}
        self._battery: BatterySample | None = None
        self._bench_cpu_s = 0.0
        self.endpoint: LocalEndpoint | None = None
        if engine.source == "local" and source is None:
            self._source = QueueSource()
            self.endpoint = LocalEndpoint(
                self._source, self._model_info, engine.local_host, engine.local_port
            ).start()

    @classmethod
    def from_settings(
        cls,
        settings: AgentSettings,
        emit_event: EmitEvent,
        profile: HardwareProfile | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_result: OnResult | None = None,
    ) -> InferenceRunner:
        return cls(
            settings.engine,
            settings.policy,
            emit_event=emit_event,
            state_dir=settings.state_dir,
            profile=profile,
            clock=clock,
            on_result=on_result,
            top_k=settings.results.top_k,
        )

    @property
    def engine(self) -> Engine | None:
        """The running engine (None before the first bundle is activated)."""
        return self._engine

    # --- the Runner protocol -------------------------------------------------------------------

    def activate(self, bundle_dir: Path, manifest: Manifest, ladder: dict[PowerLevel, str]) -> None:
        """Run `manifest`'s ladder; raise `VariantLoadError` if none of its variants runs here."""
        missing = [v for v in ladder.values() if v not in {x.id for x in manifest.variants}]
        if missing:
            raise VariantLoadError(
                f"ladder names {', '.join(missing)}, which bundle {manifest.bundle_id} lacks"
            )
        with self._lock:
            if self.policy.level is None:
                self.policy.update(self._battery, None)
            level = self.policy.level or PowerLevel.PERFORMANCE
            order = [ladder[level]] if level in ladder else []
            order += [v for v in dict.fromkeys(ladder.values()) if v not in order]
            errors = []
            previous = self._pipeline
            for vid in order:
                try:
                    self._pipeline = pipeline_for(
                        bundle_dir, manifest, vid, self.options, self.top_k
                    )
                    self._check_feedable(manifest, self._pipeline)
                    spec = self._spec(bundle_dir, manifest, vid)
                    self._run(spec, manifest)
                except VariantLoadError as exc:
                    errors.append(str(exc))
                    self._emit_event(
                        EventKind.ERROR, str(exc), {"variant": vid, "bundle_id": manifest.bundle_id}
                    )
                    continue
                self._bundle, self._ladder = (bundle_dir, manifest), dict(ladder)
                if self._engine is not None:
                    others = [v for v in dict.fromkeys(ladder.values()) if v != vid]
                    self._engine.prewarm([self._spec(bundle_dir, manifest, v) for v in others])
                return
            self._pipeline = previous
            raise VariantLoadError(
                f"no variant of bundle {manifest.bundle_id} runs here: {'; '.join(errors)}"
            )

    def stats(self) -> InferenceStats | None:
        engine = self._engine
        return engine.stats() if engine is not None else None

    def power_level(self) -> PowerLevel | None:
        return self.policy.level

    def active_variant(self) -> str | None:
        engine = self._engine
        spec = engine.active() if engine is not None else None
        return spec.id if spec is not None else None

    def update_power(self, battery: BatterySample | None, thermal: ThermalSample | None) -> None:
        with self._lock:
            self._battery = battery
            decision = self.policy.update(battery, thermal)
            if decision is not None:
                self._apply(decision.from_level, decision.to_level, decision.reason)

    def set_policy(self, command: SetPolicy) -> None:
        with self._lock:
            decision = self.policy.set_policy(command)
            if decision is not None:
                self._apply(decision.from_level, decision.to_level, decision.reason)
            elif self._engine is not None:
                self._engine.set_max_fps(self.policy.max_fps())

    def benchmark(
        self, bundle_dir: Path, manifest: Manifest, variant_ids: list[str], iterations: int
    ) -> dict[str, Any]:
        """Time each variant at batch 1 on this device (alongside the running engine), and
        check its answers on the bundle's probe set: a variant that computes something else
        on this hardware is reported with the error `wrong answers on this device: ...`."""
        timings: dict[str, VariantTiming] = {}
        probe = load_probe(bundle_dir, manifest)
        for vid in variant_ids:
            try:
                spec = self._spec(bundle_dir, manifest, vid)
                timings[vid] = self._time(spec, iterations)
                wrong = None if probe is None else self._check(spec, manifest, probe)
                if wrong is not None:
                    timings[vid] = timings[vid].model_copy(
                        update={"error": f"wrong answers on this device: {wrong}"}
                    )
            except (KeyError, VariantLoadError) as exc:
                timings[vid] = VariantTiming(error=str(exc).strip("'\""))
            except Exception as exc:
                timings[vid] = VariantTiming(error=f"{type(exc).__name__}: {exc}")
        return timings

    def cpu_seconds(self) -> float:
        engine = self._engine
        return (engine.cpu_s if engine is not None else 0.0) + self._bench_cpu_s

    def close(self) -> None:
        with self._lock:
            if self.endpoint is not None:
                self.endpoint.close()
                self.endpoint = None
            if self._engine is not None:
                self._engine.close()
            if self._source is not None:
                self._source.close()

    # --- internals -----------------------------------------------------------------------------

    def _check_feedable(self, manifest: Manifest, pipeline: Pipeline) -> None:
        """Refuse at once a bundle this box's frames cannot be fed to (not frame by frame)."""
        source = self.settings.source
        if pipeline.preprocess is None and source in IMAGE_SOURCES and source != "local":
            raise VariantLoadError(
                f"bundle {manifest.bundle_id} takes tensors, not images, and engine.source = "
                f"{source} gives images: build it with --input-scale (or an [input] table) "
                "so the agent knows how pixels become its input"
            )

    def _spec(self, bundle_dir: Path, manifest: Manifest, vid: str) -> VariantSpec:
        variant = manifest.variant(vid)
        pipeline = self._pipeline
        if pipeline is not None and pipeline.bundle_id != manifest.bundle_id:
            pipeline = None  # timed only (benchmark of another bundle): never fed frames
        return VariantSpec(vid, bundle_dir / variant.filename, variant, pipeline)

    def _run(self, spec: VariantSpec, manifest: Manifest) -> None:
        """Start the engine on `spec`, or hot-swap it in when the engine already runs."""
        engine = self._engine
        meta = {"activate": manifest.bundle_id}
        if engine is not None:
            if self.settings.source in IMAGE_SOURCES:
                same_shape = True  # pixels: the new bundle's pipeline fits them to its model
            else:
                probe = runtimes.load(
                    spec.path, spec.variant, options=self.options, variant_id=spec.id
                )
                same_shape = probe.input_shape() == engine.input_shape()
                probe.close()
            if same_shape:
                engine.install(spec, f"bundle {manifest.bundle_id} activated", meta)
                return
        # A first engine, or a model with another input shape (it needs new frames): the new
        # engine and its source are made beside the running one, which serves until they
        # work; a load or a source that fails leaves it serving.
        new = Engine(
            NoFrames(),
            # apps and video set their own pace
            fps=None if self.settings.source in ("local", "video") else self.settings.fps,
            options=self.options,
            warmup_runs=self.settings.warmup_runs,
            keep_warm=self.settings.keep_warm,
            on_event=self._on_engine_event,
            power_w=self._power_w,
            on_result=self.on_result,
        )
        new.load(spec)
        keep = engine is None or self.settings.source == "local"  # an endpoint stays the same
        source = self._source if keep else None
        if source is None:
            try:
                source = make_source(
                    self.settings,
                    new.input_shape() or (),
                    manifest.labels,
                    pipeline=spec.pipeline,
                    on_event=self._on_source_event,
                )
            except UserError:
                new.close()
                raise
        if engine is not None:
            engine.close()
        if self._source is not None and self._source is not source:
            self._source.close()
        self._source = new.source = source
        new.set_max_fps(self.policy.max_fps())
        self._engine = new.start()

    def _apply(self, from_level: PowerLevel | None, to_level: PowerLevel, reason: str) -> None:
        engine = self._engine
        if engine is not None:
            engine.set_max_fps(self.policy.max_fps())
        current = self.active_variant()
        target = self._ladder.get(to_level)
        meta = {"from_level": from_level, "to_level": to_level}
        if engine is None or self._bundle is None or target is None or target == current:
            if from_level is None:
                return  # the first reading sets the level: nothing switched
            # The level changed but the variant stays: a policy event, not a precision switch
            # (that one comes from the engine once it really runs another variant).
            data = {"from_level": from_level, "to_level": to_level, "variant": current}
            self._emit_event(EventKind.POLICY, reason, data)
            return
        engine.switch_to(self._spec(*self._bundle, target), reason, meta)

    def _on_engine_event(self, kind: str, data: dict[str, Any]) -> None:
        switch = data.get("switch")
        if kind == "switched" and switch is not None:
            if "activate" in switch.meta:
                return  # the agent reports deploys itself
            payload = {
                "from_variant": switch.from_id,
                "to_variant": switch.to.id,
                "from_level": switch.meta.get("from_level"),
                "to_level": switch.meta.get("to_level"),
                "precision": switch.to.precision,
                "decision_to_first_frame_ms": round(
                    (switch.decision_to_first_frame_s or 0.0) * 1e3, 3
                ),
            }
            self._emit_event(EventKind.PRECISION_SWITCH, switch.reason, payload)
        elif kind == "load_failed":
            self._emit_event(
                EventKind.ERROR,
                f"{data['error']}; staying on {self.active_variant()}",
                {"variant": data["variant"]},
            )
        elif kind in ("run_failed", "fallback"):
            back = data.get("fallback") or data.get("to")
            self._emit_event(
                EventKind.ERROR,
                f"variant {data['variant']} failed to run ({data['error']}); back on {back}",
                {"variant": data["variant"], "fallback": back},
            )

    def _on_source_event(self, kind: str, reason: str) -> None:
        self._emit_event(EventKind.SOURCE, reason, {"source": kind})

    def _power_w(self) -> float | None:
        battery = self._battery
        return battery.power_w if battery is not None and not battery.charging else None

    def _model_info(self) -> ModelInfo | None:
        engine, bundle = self._engine, self._bundle
        spec = engine.active() if engine is not None else None
        shape = engine.input_shape() if engine is not None else None
        if spec is None or shape is None:
            return None
        pipeline = spec.pipeline
        return ModelInfo(
            spec.id,
            shape,
            list(bundle[1].labels) if bundle else [],
            task=pipeline.task.value if pipeline is not None else "classification",
            takes_images=pipeline is not None and pipeline.preprocess is not None,
        )

    def _check(
        self, spec: VariantSpec, manifest: Manifest, probe: dict[str, np.ndarray]
    ) -> str | None:
        """The variant's outputs on the probe inputs against fp32's. Only where this engine
        runs the model as the factory did: one float input, one output (anything else is left
        unchecked rather than judged through the wrong tensor)."""
        fmt = manifest.variant(spec.id).format
        outputs = [k for k in probe if k.startswith(f"{fmt.value}.output")]
        if "input1" in probe or len(outputs) != 1 or probe["input0"].dtype.kind != "f":
            return None
        rt = runtimes.load(spec.path, spec.variant, options=self.options, variant_id=spec.id)
        try:
            x = probe["input0"].astype(np.float32)
            got = np.concatenate([rt.run(x[i : i + 1]) for i in range(len(x))])
        finally:
            rt.close()
        return wrong_answers(manifest, fmt, [got], probe)

    def _time(self, spec: VariantSpec, iterations: int) -> VariantTiming:
        rt = runtimes.load(spec.path, spec.variant, options=self.options, variant_id=spec.id)
        try:
            x = np.random.default_rng(0).random((1, *rt.input_shape()), dtype=np.float32)
            for _ in range(min(5, iterations)):
                rt.run(x)
            times = np.empty(iterations)
            c0 = time.thread_time()
            for i in range(iterations):
                t0 = time.perf_counter()
                rt.run(x)
                times[i] = time.perf_counter() - t0
            self._bench_cpu_s += time.thread_time() - c0
        finally:
            rt.close()
        p50, p95, p99 = (float(v) for v in np.percentile(times * 1e3, [50, 95, 99]))
        return VariantTiming(p50_ms=p50, p95_ms=p95, p99_ms=p99)
