"""Bench: battery life with the power-aware policy vs pinned to fp32 (goal >= 1.5x, accuracy
within 1 point), and the plot for the README.

    .venv/bin/python bench/engine_battery.py [--plot docs/engine_battery.png]

Two simulated 10 Wh batteries (agent.probes.battery.SimulatedBattery) drained at the same time,
one core each so both see the same load on this shared machine, by two real engines running the
reference Fashion-MNIST bundle on labeled test frames at a fixed 30 fps, each frame a batch of
64 images (a box classifying many crops per frame). Power model, in simulated watts:
idle_w + w_per_cpu_s x (CPU-seconds spent inferring per second), with the CPU time measured
around every run call of this machine's runtimes. The simulation runs `--time-scale` times
faster than real time; the policy's clock (dwell, hysteresis) is scaled the same way.
Ladder: performance/balanced -> tflite-fp32, saver/critical -> tflite-int8-static (what the
controller's selection makes of a two-point fp32/int8 frontier); critical also caps the frame
rate (PolicySettings.critical_max_fps, default 5). Accuracy is compared on the same images:
the live figures differ by the images each run saw as well (the longer run sees more), so
the check weights each variant's accuracy on the bundle's evaluation set by the images it
served.

`--ladder sizes` runs a ladder that spans model size as well: the seed CNN trained by
examples/fashion_mnist/train.py and the same model pruned by half (L1 norm, fine-tuned 2
epochs), one bundle built by `HardwareAdapter.fit(..., prune=0.5)` (cached), the ladder chosen
by the controller's selection for a LiteRT box from the build-host timings. With
`--model large`, the large reference CNN and its distilled half-width student (committed,
bundle from bench/factory_sizes.py) instead; give it fewer images per frame (`--batch 8`).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.engine_overhead import CACHE, fashion_variants  # noqa: E402
from lepton_edge.agent.config import SimulatedBatterySettings  # noqa: E402
from lepton_edge.agent.engine import EngineSettings  # noqa: E402
from lepton_edge.agent.power import PolicySettings  # noqa: E402
from lepton_edge.agent.probes.battery import SimulatedBattery  # noqa: E402
from lepton_edge.agent.runner import InferenceRunner  # noqa: E402
from lepton_edge.agent.sources import Frame, Result  # noqa: E402
from lepton_edge.shared.manifest import Manifest  # noqa: E402
from lepton_edge.shared.messages import EventKind, PowerLevel  # noqa: E402

LEVEL_Y = {
    PowerLevel.PERFORMANCE: 3,
    PowerLevel.BALANCED: 2,
    PowerLevel.SAVER: 1,
    PowerLevel.CRITICAL: 0,
}


def drain(
    policy: PolicySettings,
    args: argparse.Namespace,
    manifest: Manifest,
    bundle_dir: Path,
    ladder: dict[PowerLevel, str],
    result: dict[str, Any],
    emptied: threading.Barrier,
) -> None:
    t_start = time.monotonic()

    def sim_clock() -> float:
        return (time.monotonic() - t_start) * args.time_scale

    events: list[tuple[float, str, dict[str, Any]]] = []

    def emit(kind: EventKind, reason: str, data: dict[str, Any]) -> None:
        # every power-level change: a precision switch, or a policy event keeping the variant
        if kind == EventKind.PRECISION_SWITCH or (kind == EventKind.POLICY and "to_level" in data):
            events.append((sim_clock() / 3600, reason, data))

    runner = InferenceRunner(
        EngineSettings(source="idx", fps=args.fps, batch=args.batch, threads=1),
        policy,
        emit_event=emit,
        clock=sim_clock,
    )
    battery = SimulatedBattery(
        SimulatedBatterySettings(
            capacity_wh=args.capacity_wh,
            idle_w=args.idle_w,
            w_per_cpu_s=args.w_per_cpu_s,
            time_scale=args.time_scale,
        ),
        cpu_seconds=runner.cpu_seconds,
    )
    correct = [0, 0]
    served: dict[str, int] = {}  # images per variant
    lock = threading.Lock()
    runner.update_power(battery.sample(), None)
    runner.activate(bundle_dir, manifest, ladder)
    engine = runner.engine
    assert engine is not None

    def on_result(frame: Frame, result: Result) -> None:
        if frame.label is not None and result.scores is not None:
            with lock:
                correct[0] += int((result.scores.argmax(1) == frame.label).sum())
                correct[1] += len(frame.label)
                variant = result.variant or "?"
                served[variant] = served.get(variant, 0) + len(frame.label)

    engine.on_result = on_result
    trace: list[tuple[float, float, int, float | None, float]] = []
    while True:
        time.sleep(args.tick)
        sample = battery.sample()
        runner.update_power(sample, None)
        stats = runner.stats()
        level = runner.power_level() or PowerLevel.PERFORMANCE
        p50 = stats.latency_p50_ms if stats else None
        trace.append((sim_clock() / 3600, sample.percent, LEVEL_Y[level], p50, sample.power_w or 0))
        if sample.percent <= 0:
            break
    result.update(
        hours=sim_clock() / 3600,
        accuracy=correct[0] / max(1, correct[1]),
        served=served,
        images=correct[1],
        trace=trace,
        events=events,
    )
    # Keep inferring until the other run's battery is empty too, so both runs share the same
    # machine load from start to end (this box is shared; CPU time per inference varies).
    emptied.wait()
    runner.close()


def sizes_bundle() -> Path:
    """The seed CNN and its half-pruned copy in one bundle (built once, then cached)."""
    out = CACHE / "fashion_mnist_sizes"
    if (out / "manifest.json").is_file():
        return out
    sys.path.insert(0, str(ROOT / "examples" / "fashion_mnist"))
    import train as seed  # examples/fashion_mnist/train.py

    from lepton_edge.controller.factory import HardwareAdapter
    from lepton_edge.shared.idx import fashion_mnist

    started = time.perf_counter()
    model = seed.train()
    images, labels = fashion_mnist("train")
    HardwareAdapter(out, model_name="seed-sizes", input_scale=1 / 255).fit(
        model, images[..., None], labels.astype(np.int64), prune=0.5, epochs=2
    )
    print(f"built {out} in {time.perf_counter() - started:.0f} s (training included)")
    return out


def sizes_ladder(manifest: Manifest) -> dict[PowerLevel, str]:
    """What the controller's selection picks for a LiteRT box from the build-host timings."""
    from lepton_edge.controller.selection import select
    from lepton_edge.shared.hardware import HardwareProfile

    box = HardwareProfile(
        arch="x86_64",
        cpu_model="bench",
        cores=2,
        features=["avx2"],
        memory_mb=4096,
        runtimes={"litert": "any"},
    )
    return select(manifest, box).ladder.mapping()


def _weighted_accuracy(manifest: Manifest, served: dict[str, int]) -> float:
    total = sum(served.values()) or 1
    return sum(manifest.variant(v).metrics.accuracy * n for v, n in served.items()) / total


def plot(path: Path, runs: dict[str, dict[str, Any]], batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(7, 5.6), sharex=True)
    styles = {"power-aware policy": "tab:green", "pinned fp32": "tab:gray"}
    for name, run in runs.items():
        t = np.array([r[0] for r in run["trace"]])
        color = styles[name]
        axes[0].plot(t, [r[1] for r in run["trace"]], color=color, label=name)
        axes[1].step(t, [r[2] for r in run["trace"]], where="post", color=color, label=name)
        timed = [(r[0], r[3]) for r in run["trace"] if r[3] is not None]  # ticks with frames
        axes[2].plot([a for a, _ in timed], [b for _, b in timed], color=color, linewidth=0.8)
    axes[0].set_ylabel("battery %")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].set_yticks(list(LEVEL_Y.values()), [lvl.value for lvl in LEVEL_Y], fontsize=8)
    axes[1].set_ylabel("level")
    axes[2].set_ylabel(f"p50 latency ms\n(batch of {batch})")
    axes[2].set_xlabel("simulated hours on a 10 Wh battery")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(
        "Precision switching on a simulated battery (bench/engine_battery.py)", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--batch", type=int, default=64, help="images per frame")
    parser.add_argument("--capacity-wh", type=float, default=10.0)
    parser.add_argument("--idle-w", type=float, default=0.3, help="simulated idle draw")
    parser.add_argument("--w-per-cpu-s", type=float, default=15.0, help="W per CPU-second/s")
    parser.add_argument("--time-scale", type=float, default=1500.0)
    parser.add_argument("--tick", type=float, default=0.1, help="real seconds between samples")
    parser.add_argument("--plot", type=Path, default=None, help="default docs/engine_battery*.png")
    parser.add_argument(
        "--ladder", choices=["precision", "sizes"], default="precision", help="see the docstring"
    )
    parser.add_argument("--model", choices=["seed", "large"], default="seed", help="for sizes")
    args = parser.parse_args()
    if args.ladder == "sizes":
        if args.model == "large":
            from bench.factory_sizes import large_bundle

            bundle_dir = large_bundle()[0]
        else:
            bundle_dir = sizes_bundle()
        manifest = Manifest.model_validate_json((bundle_dir / "manifest.json").read_bytes())
        ladder = sizes_ladder(manifest)
    else:
        fashion_variants()
        bundle_dir = CACHE / "fashion_mnist"
        manifest = Manifest.model_validate_json((bundle_dir / "manifest.json").read_bytes())
        ladder = {
            PowerLevel.PERFORMANCE: "tflite-fp32",
            PowerLevel.BALANCED: "tflite-fp32",
            PowerLevel.SAVER: "tflite-int8-static",
            PowerLevel.CRITICAL: "tflite-int8-static",
        }
    suffix = {"precision": "", "sizes": "_sizes"}[args.ladder] + (
        "_large" if args.ladder == "sizes" and args.model == "large" else ""
    )
    args.plot = args.plot or ROOT / "docs" / f"engine_battery{suffix}.png"
    print("ladder: " + ", ".join(f"{level.value} {vid}" for level, vid in ladder.items()))
    policies = {
        "pinned fp32": PolicySettings(override=PowerLevel.PERFORMANCE),
        "power-aware policy": PolicySettings(),
    }
    # Pinned fp32 is the base model's fp32 at every level: what a box runs without lepton.
    pinned = {level: "tflite-fp32" for level in PowerLevel}
    ladders = {"pinned fp32": pinned, "power-aware policy": ladder}
    runs: dict[str, dict[str, Any]] = {name: {} for name in policies}
    emptied = threading.Barrier(len(policies))
    threads = [
        threading.Thread(
            target=drain,
            args=(policy, args, manifest, bundle_dir, ladders[name], runs[name], emptied),
        )
        for name, policy in policies.items()
    ]
    for t in threads:  # both at once, one core each: the same machine noise for both
        t.start()
    for t in threads:
        t.join()
    for name, run in runs.items():
        print(
            f"{name:<20} lasted {run['hours']:6.2f} simulated h  accuracy {run['accuracy'] * 100:.2f} %"
            f"  over {run['images']} images"
        )
        for t, reason, data in run["events"]:
            variant = data.get("to_variant") or data.get("variant")  # switched to, or kept
            print(
                f"    {t:6.2f} h  {data['from_level']} -> {data['to_level']} ({variant}): {reason}"
            )
    policy, fp32 = runs["power-aware policy"], runs["pinned fp32"]
    life = policy["hours"] / fp32["hours"]
    # The two runs classify different images (one lasts longer), so the live figures above
    # differ by the images as well. Compared on the same images: each variant's accuracy on
    # the bundle's whole evaluation set, weighted by the images it served in the run.
    weighted = {name: _weighted_accuracy(manifest, run["served"]) for name, run in runs.items()}
    delta = (weighted["power-aware policy"] - weighted["pinned fp32"]) * 100
    print(
        "on the same images (the evaluation set, each variant weighted by the images it "
        "served): " + ", ".join(f"{name} {acc * 100:.2f} %" for name, acc in weighted.items())
    )
    plot(args.plot, runs, args.batch)
    print(
        f"\none run; power model: idle {args.idle_w} W + {args.w_per_cpu_s} W per CPU-second/s, "
        f"{args.capacity_wh} Wh, {args.fps:g} fps x {args.batch} images, time x{args.time_scale:g}"
    )
    goal = 2.0 if args.ladder == "sizes" else 1.5
    checks = [
        (f"battery life x{life:.2f} with the policy vs pinned fp32 (>= {goal})", life >= goal),
        (f"accuracy {delta:+.2f} points vs pinned fp32, same images (within 1)", abs(delta) <= 1),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(f"plot: {args.plot} ({args.plot.stat().st_size // 1024} KiB)")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
