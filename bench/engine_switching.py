"""Bench: 100 hot switches at 30 fps — dropped/late frames and decision-to-first-frame time.

    .venv/bin/python bench/engine_switching.py [--switches 100] [--fps 30]

The reference Fashion-MNIST bundle (built once, cached in ~/.cache/lepton/bench), labeled
IDX frames at a fixed rate. Runs of equal length, one run each: no switches (the baseline:
what this busy machine does anyway), then fp32 <-> int8 back and forth in LiteRT and in ONNX
Runtime with the ladder kept warm (the default), then LiteRT again with `keep_warm=0` (each
switch loads the file). Decisions come at random moments within a frame period. Goals: no
dropped or late frame within two frame periods after a switch, and decision -> first frame on
the new variant (the moment it takes the frame) <= one frame period.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.engine_overhead import fashion_variants  # noqa: E402
from lepton_edge.agent.engine import Engine, Switch, VariantSpec  # noqa: E402
from lepton_edge.agent.runtimes import RuntimeOptions  # noqa: E402
from lepton_edge.agent.sources import ArraySource, Frame, Result, idx_source  # noqa: E402


def run(
    pair: tuple[str, str] | None,
    files: dict[str, Path],
    switches: int,
    fps: float,
    every_s: float,
    keep_warm: int,
) -> dict[str, float]:
    events: list[Switch] = []
    failures: list[str] = []

    def on_event(kind: str, data: dict[str, object]) -> None:
        if kind == "switched":
            events.append(data["switch"])  # type: ignore[arg-type]
        else:
            failures.append(f"{kind}: {data}")

    first = pair[0] if pair else "tflite-fp32"
    misses: list[tuple[float, int]] = []  # (when, dropped+late so far) after every frame

    def on_result(frame: Frame, result: Result) -> None:
        misses.append((time.perf_counter(), engine.dropped + engine.deadline_misses))

    engine = Engine(
        ArraySource(idx_source().array / np.float32(255)),  # the model's tensors, no pipeline
        fps=fps,
        options=RuntimeOptions(threads=1),
        keep_warm=keep_warm,
        on_event=on_event,
        on_result=on_result,
    )
    engine.load(VariantSpec(first, files[first]))
    if pair and keep_warm:
        engine.prewarm([VariantSpec(pair[1], files[pair[1]])])
        time.sleep(0.5)
    rng = random.Random(0)
    period = 1.0 / fps
    engine.start()
    time.sleep(0.5)
    engine.stats()
    base = (engine.frames, engine.dropped, engine.deadline_misses)
    started = time.perf_counter()
    decisions: list[float] = []
    for i in range(switches):
        time.sleep(every_s + rng.random() * period)
        if pair:
            target = pair[(i + 1) % 2]
            decisions.append(
                engine.switch_to(VariantSpec(target, files[target]), "bench").decided_at
            )
    time.sleep(every_s)
    elapsed = time.perf_counter() - started
    frames = engine.frames - base[0]
    dropped = engine.dropped - base[1]
    late = engine.deadline_misses - base[2]
    stats = engine.stats()
    engine.close()
    # a dropped or late frame within two periods after a decision counts against the switch
    bad = [t for (t, n), (_, before) in zip(misses[1:], misses, strict=False) if n > before]
    bad = [t for t in bad if t >= started]
    near = sum(1 for t in bad if any(0 <= t - d <= 2 * period for d in decisions))
    d2ff = np.array(
        [s.decision_to_first_frame_s for s in events if s.decision_to_first_frame_s is not None]
    )
    return {
        "slots": elapsed * fps,
        "frames": frames,
        "dropped": dropped,
        "late": late,
        "near_switch": near,
        "switched": len(events),
        "failures": len(failures),
        "d2ff_p50_ms": float(np.percentile(d2ff, 50) * 1e3) if len(d2ff) else 0.0,
        "d2ff_p95_ms": float(np.percentile(d2ff, 95) * 1e3) if len(d2ff) else 0.0,
        "d2ff_max_ms": float(d2ff.max() * 1e3) if len(d2ff) else 0.0,
        "accuracy": stats.accuracy or 0.0,
        "period_ms": period * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=100)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--every", type=float, default=0.15, help="seconds between decisions")
    args = parser.parse_args()
    files = fashion_variants()
    cases: list[tuple[str, tuple[str, str] | None, int]] = [
        ("baseline, no switches", None, 3),
        ("litert fp32<->int8, warm", ("tflite-fp32", "tflite-int8-static"), 3),
        ("onnx fp32<->int8, warm", ("onnx-fp32", "onnx-int8-static"), 3),
        ("litert fp32<->int8, keep_warm=0", ("tflite-fp32", "tflite-int8-static"), 0),
    ]
    results = {}
    for name, pair, warm in cases:
        r = run(pair, files, args.switches, args.fps, args.every, warm)
        results[name] = r
        print(
            f"{name:<34} frames {r['frames']:5.0f}/{r['slots']:5.0f} slots  dropped {r['dropped']:3.0f}"
            f"  late {r['late']:3.0f} ({r['near_switch']:.0f} near a switch)  switches {r['switched']:3.0f}  decision->first frame "
            f"p50 {r['d2ff_p50_ms']:5.1f} p95 {r['d2ff_p95_ms']:5.1f} max {r['d2ff_max_ms']:5.1f} ms"
            f"  accuracy {r['accuracy'] * 100:.1f} %",
            flush=True,
        )
    base = results["baseline, no switches"]
    period = base["period_ms"]
    print(
        f"\none run, {args.switches} switches per case at {args.fps:g} fps (period {period:.1f} ms):"
    )
    ok = True
    for name, r in list(results.items())[1:]:
        extra = r["near_switch"]
        checks = [
            (f"{name}: all {args.switches} switches done, none failed",
             r["switched"] == args.switches and r["failures"] == 0),
            (f"{name}: dropped or late frames within 2 periods of a switch: {extra:.0f}",
             extra == 0),
            (f"{name}: decision->first frame max {r['d2ff_max_ms']:.1f} ms <= {period:.1f} ms",
             r["d2ff_max_ms"] <= period),
        ]  # fmt: skip
        warm = "keep_warm=0" not in name
        for text, passed in checks:
            verdict = ("PASS" if passed else "FAIL") if warm else "info"
            ok &= passed or not warm
            print(f"{verdict}  {text}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
