"""Variant selection: which variants of a bundle fit a device, and which one per power level.

Pure functions over a manifest, a hardware profile and latencies (`ladder_for` at the end reads
the latencies from the registry). Latency comes from
benchmarks run ON devices (kept per hardware class); the build host's figures are only a
fallback, and every choice says which source it used.

The ladder is built on the cost/accuracy frontier of the eligible variants:
- critical  = the cheapest variant: among those within `cheap_margin` (25 %) of the fastest
  latency, the smallest file (fewer bytes moved per inference; on small models latency
  differences of a few percent are noise, the 2-4x smaller int8 file is not);
- performance = the most accurate among the fast ones (within `fast_factor` of the fastest
  variant of the same model: a slow scheme is left out, a bigger and more accurate model is
  not; accuracies within `accuracy_noise` points count as equal, then higher precision wins);
- balanced / saver = frontier points between the two (2/3 and 1/3 of the way down).
So two devices with different hardware get different ladders, and a ladder has two distinct
variants whenever a cheaper variant exists that is not slower.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session

from lepton_edge.controller.config import SelectionSettings
from lepton_edge.controller.tables import BenchmarkRecord
from lepton_edge.shared.hardware import HardwareProfile
from lepton_edge.shared.manifest import Ladder, LadderStep, Manifest, Variant
from lepton_edge.shared.messages import PowerLevel

LatencySource = Literal["device", "build-host", "none"]


@dataclass(frozen=True)
class Measured:
    """A variant's on-device timing for one hardware class (`error` if it failed there)."""

    p50_ms: float | None
    p99_ms: float | None = None
    error: str | None = None


@dataclass
class Candidate:
    variant: Variant
    latency_ms: float | None
    source: LatencySource
    accuracy: float | None

    def describe(self) -> str:
        lat = f"{self.latency_ms:.3f} ms ({self.source})" if self.latency_ms is not None else "?"
        acc = f"{self.accuracy * 100:.2f} %" if self.accuracy is not None else "?"
        what = "accuracy" if self.variant.metrics.accuracy is not None else "quality"
        v = self.variant
        model = ""
        if v.architecture is not None and v.parameters is not None:  # which model, how big
            work = f", {v.macs / 1e6:.2f} M MACs" if v.macs is not None else ""
            model = f" ({v.architecture}: {v.parameters:,} parameters{work})"
        return f"{v.id}{model}: p50 {lat}, {what} {acc}"


@dataclass
class Selection:
    ladder: Ladder
    hardware_class: str
    latency_source: dict[str, LatencySource] = field(default_factory=dict)
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class NoEligibleVariant(Exception):
    """Nothing in the bundle runs on this device; `rejected` says why for each variant."""

    def __init__(self, bundle_id: str, rejected: dict[str, str]) -> None:
        super().__init__(
            f"no variant of bundle {bundle_id} fits this device: "
            + "; ".join(f"{k}: {v}" for k, v in rejected.items())
        )
        self.rejected = rejected


def _eligibility(
    variant: Variant,
    profile: HardwareProfile,
    tolerance: float,
    measured: Measured | None,
) -> str | None:
    """Why `variant` cannot serve this device, or None."""
    if variant.status != "accepted":
        return f"rejected at build time: {variant.reason or 'no reason given'}"
    runtime = variant.requirements.runtime
    if runtime not in profile.runtimes:
        have = ", ".join(sorted(profile.runtimes)) or "none"
        return f"needs runtime {runtime}, the device has {have}"
    missing = sorted(set(variant.requirements.cpu_features) - set(profile.features))
    if missing:
        return f"needs CPU features {', '.join(missing)} the device lacks"
    need = variant.requirements.min_memory_mb
    if need and need > profile.memory_mb:
        return f"needs {need} MB of memory, the device has {profile.memory_mb} MB"
    delta = variant.metrics.accuracy_delta
    if delta is not None and delta < -tolerance:
        return (
            f"loses {-delta:.2f} accuracy points vs fp32, over the {tolerance:.2f}-point tolerance"
        )
    if measured is not None and measured.error:
        return f"failed in the on-device benchmark: {measured.error}"
    return None


def _candidate(variant: Variant, measured: Measured | None) -> Candidate:
    if measured is not None and measured.p50_ms is not None:
        return Candidate(variant, measured.p50_ms, "device", variant.metrics.quality())
    if variant.metrics.latency_p50_ms is not None:
        return Candidate(
            variant, variant.metrics.latency_p50_ms, "build-host", variant.metrics.quality()
        )
    return Candidate(variant, None, "none", variant.metrics.quality())


def _noise(c: Candidate) -> float:
    """How far apart two timings of it can be by noise alone: the spread of the factory's
    round medians (on-device timings have none recorded)."""
    spread = c.variant.metrics.latency_spread if c.source == "build-host" else None
    return spread or 1.0


def _cost_key(c: Candidate) -> tuple[float, int]:
    return (c.latency_ms if c.latency_ms is not None else float("inf"), c.variant.size_bytes)


def _acc(c: Candidate) -> float:
    return c.accuracy if c.accuracy is not None else -1.0


_PRECISION_RANK = {"fp32": 3, "fp16": 2, "int8": 1}


def _most_accurate(candidates: list[Candidate], noise_points: float) -> Candidate:
    """Best accuracy; accuracies within `noise_points` (one or two test images) count as equal,
    and then the higher precision wins (the more faithful model while power is plentiful),
    then the lower latency."""
    best = max(_acc(c) for c in candidates)
    close = [c for c in candidates if _acc(c) >= best - noise_points / 100 - 1e-12]
    return max(
        close,
        key=lambda c: (
            _PRECISION_RANK.get(c.variant.precision.value, 0),
            -(c.latency_ms if c.latency_ms is not None else float("inf")),
            -c.variant.size_bytes,
        ),
    )


def select(
    manifest: Manifest,
    profile: HardwareProfile,
    measurements: dict[str, Measured] | None = None,
    *,
    tolerance_points: float | None = None,
    fast_factor: float = 2.5,
    cheap_margin: float = 0.25,
    accuracy_noise: float = 0.1,
) -> Selection:
    """The ladder for one device; raise `NoEligibleVariant` when nothing fits."""
    measurements = measurements or {}
    tolerance = manifest.tolerance_points if tolerance_points is None else tolerance_points
    # A smaller architecture may lose what the build allowed it on top (its accuracy delta is
    # against the base model's fp32).
    extra = manifest.tolerance.architecture_points if manifest.tolerance else None
    rejected: dict[str, str] = {}
    eligible: list[Candidate] = []
    for variant in manifest.variants:
        derived = variant.architecture not in (None, "base") and extra is not None
        allowed = tolerance + (extra or 0.0) if derived else tolerance
        why = _eligibility(variant, profile, allowed, measurements.get(variant.id))
        if why:
            rejected[variant.id] = why
        else:
            eligible.append(_candidate(variant, measurements.get(variant.id)))
    if not eligible:
        raise NoEligibleVariant(manifest.bundle_id, rejected)

    notes = []
    # Mixing sources would compare a device's timing with another machine's: when some
    # variants were measured on this hardware class, rank only those.
    on_device = [c for c in eligible if c.source == "device"]
    if on_device and len(on_device) < len(eligible):
        for c in eligible:
            if c.source != "device":
                rejected[c.variant.id] = (
                    "not measured on this hardware class (other variants were); "
                    "run a benchmark to consider it"
                )
        eligible = on_device
    if not on_device:
        notes.append("no on-device benchmark for this hardware class: ranked by build-host latency")

    timed = [c for c in eligible if c.latency_ms is not None]
    if timed:
        fastest = min(c.latency_ms for c in timed if c.latency_ms is not None)
        # Within the timing noise is a tie, even past `cheap_margin`.
        margin = max(1 + cheap_margin, *(_noise(c) for c in timed))
        near_fastest = [
            c for c in timed if c.latency_ms is not None and c.latency_ms <= fastest * margin
        ]
        critical = min(near_fastest, key=lambda c: (c.variant.size_bytes, c.latency_ms or 0.0))
        # A bigger model is slower by design, so "fast" is measured against the fastest
        # variant of the same model: a slow scheme is left out, a more accurate model is not.
        fastest_of: dict[str, float] = {}
        for c in timed:
            arch = c.variant.architecture or "base"
            fastest_of[arch] = min(fastest_of.get(arch, float("inf")), c.latency_ms or 0.0)
        fast = [
            c
            for c in timed
            if (c.latency_ms or 0.0) <= fastest_of[c.variant.architecture or "base"] * fast_factor
        ]
        performance = _most_accurate(fast, accuracy_noise)
    else:  # nothing timed anywhere: fall back to size as the cost
        notes.append("no latency known for any variant: cost ranked by file size")
        critical = min(eligible, key=lambda c: c.variant.size_bytes)
        performance = _most_accurate(eligible, accuracy_noise)

    # The frontier from critical up to performance: each step strictly more accurate.
    frontier = [critical]
    if performance is not critical:
        lo, hi = _cost_key(critical), _cost_key(performance)
        between = sorted(
            (c for c in eligible if lo < _cost_key(c) < hi and c is not performance), key=_cost_key
        )
        for c in between:
            if _acc(c) > _acc(frontier[-1]) and _acc(c) < _acc(performance):
                frontier.append(c)
        frontier.append(performance)

    k = len(frontier) - 1
    index = {
        PowerLevel.PERFORMANCE: k,
        PowerLevel.BALANCED: round(k * 2 / 3),
        PowerLevel.SAVER: round(k / 3),
        PowerLevel.CRITICAL: 0,
    }
    why_level = {
        PowerLevel.PERFORMANCE: "most accurate of the fast variants (ties: higher precision)",
        PowerLevel.BALANCED: "two thirds up the cost/accuracy frontier",
        PowerLevel.SAVER: "one third up the cost/accuracy frontier",
        PowerLevel.CRITICAL: "lowest cost (latency, then size)",
    }
    steps = [
        LadderStep(
            level=level,
            variant_id=frontier[i].variant.id,
            why=f"{why_level[level]}: {frontier[i].describe()}",
        )
        for level, i in index.items()
    ]
    chosen = {s.variant_id for s in steps}
    for c in eligible:
        if c.variant.id in chosen or c.variant.id in rejected:
            continue
        rejected[c.variant.id] = _why_not_chosen(c, performance, critical, fast_factor)
    return Selection(
        ladder=Ladder(bundle_id=manifest.bundle_id, steps=steps, rejected=rejected),
        hardware_class=profile.hardware_class(),
        latency_source={c.variant.id: c.source for c in eligible},
        latency_ms={c.variant.id: c.latency_ms for c in eligible},
        notes=notes,
    )


def _why_not_chosen(
    c: Candidate, performance: Candidate, critical: Candidate, fast_factor: float
) -> str:
    if c.latency_ms is None and performance.latency_ms is not None:
        return "no latency measured for it"
    if (
        c.latency_ms is not None
        and critical.latency_ms is not None
        and c.latency_ms > critical.latency_ms * fast_factor
        and _acc(c) <= _acc(performance)
    ):
        return (
            f"slower ({c.latency_ms:.3f} ms, {c.source}) than {critical.variant.id} "
            f"({critical.latency_ms:.3f} ms) and not more accurate than {performance.variant.id}"
        )
    if _acc(c) <= _acc(critical):
        return f"no more accurate than the cheaper {critical.variant.id}: {c.describe()}"
    return f"dominated on the cost/accuracy frontier: {c.describe()}"


# --- from the registry ------------------------------------------------------------------------


def measurements_for(session: Session, hardware_class: str, bundle_id: str) -> dict[str, Measured]:
    return {
        r.variant_id: Measured(p50_ms=r.p50_ms, p99_ms=r.p99_ms, error=r.error)
        for r in session.scalars(
            sql_select(BenchmarkRecord).where(
                BenchmarkRecord.hardware_class == hardware_class,
                BenchmarkRecord.bundle_id == bundle_id,
            )
        )
    }


def ladder_for(
    session: Session, settings: SelectionSettings, manifest: Manifest, profile: HardwareProfile
) -> Selection:
    """The ladder a deploy sends to this device (the API's ladder view shows the same one)."""
    return select(
        manifest,
        profile,
        measurements_for(session, profile.hardware_class(), manifest.bundle_id),
        tolerance_points=settings.tolerance_points,
        fast_factor=settings.fast_factor,
        cheap_margin=settings.cheap_margin,
        accuracy_noise=settings.accuracy_noise_points,
    )
