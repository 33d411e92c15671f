"""`lepton-agent infer`: run a bundle's variants on local frames and print their figures.

Each variant runs through the real engine (same loop as the service) on the same frames, so
the table compares latency, CPU time and accuracy on this very box:

    lepton-agent infer ./bundle --frames 2000                 # every accepted variant
    lepton-agent infer ./bundle --variant tflite-int8-static --source images --path ./photos
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lepton_edge.agent.engine import Engine, EngineSettings, VariantSpec
from lepton_edge.agent.runner import make_source, pipeline_for
from lepton_edge.agent.runtimes import RuntimeOptions, VariantLoadError
from lepton_edge.agent.sources import NoFrames
from lepton_edge.shared.bundle import verify_bundle
from lepton_edge.shared.errors import BundleInvalid, UserError
from lepton_edge.shared.manifest import Manifest
from lepton_edge.shared.signing import load_public_key


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle folder (manifest.json + variant files)")
    parser.add_argument(
        "--variant", action="append", help="variant id to run (repeatable); default: all accepted"
    )
    parser.add_argument(
        "--source", choices=["idx", "images", "synthetic"], default="idx", help="default: idx"
    )
    parser.add_argument("--path", type=Path, help="IDX images file or image folder")
    parser.add_argument("--labels", type=Path, help="IDX labels file for --path")
    parser.add_argument("--frames", type=int, default=1000, help="frames per variant")
    parser.add_argument(
        "--fps", type=float, help="target frame rate (default: as fast as possible)"
    )
    parser.add_argument("--batch", type=int, default=1, help="images per inference")
    parser.add_argument("--threads", type=int, help="runtime threads (default: runtime's choice)")
    parser.add_argument("--key", type=Path, help="controller public key (PEM) to verify the bundle")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def load_bundle(folder: Path, key: Path | None = None) -> Manifest:
    """`shared.bundle.verify_bundle` (signature only given a key); `UserError` on any problem."""
    public_key = None
    if key is not None:
        try:
            public_key = load_public_key(key.read_bytes())
        except (OSError, ValueError) as exc:
            raise UserError(f"--key {key}: not a readable public key ({exc})") from None
    try:
        return verify_bundle(folder, public_key)
    except BundleInvalid as exc:
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.batch < 1:
        raise UserError("--frames and --batch must be at least 1")
    manifest = load_bundle(args.bundle, args.key)
    ids = args.variant or [v.id for v in manifest.accepted()]
    unknown = [i for i in ids if i not in {v.id for v in manifest.variants}]
    if unknown:
        known = ", ".join(v.id for v in manifest.variants)
        raise UserError(f"bundle has no variant {', '.join(unknown)}; it has: {known}")
    settings = EngineSettings(
        source=args.source,
        source_path=args.path,
        labels_path=args.labels,
        batch=args.batch,
        fps=args.fps,
    )
    options = RuntimeOptions(threads=args.threads)
    rows = []
    for vid in ids:
        variant = manifest.variant(vid)
        try:
            pipeline = pipeline_for(args.bundle, manifest, vid, options)
        except VariantLoadError as exc:
            rows.append({"variant": vid, "precision": variant.precision.value, "error": str(exc)})
            continue
        spec = VariantSpec(vid, args.bundle / variant.filename, variant, pipeline)
        rows.append(_run_one(spec, settings, options, args.frames, manifest.labels))
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        _print_table(rows)
    return 1 if any(r.get("error") for r in rows) else 0


def _run_one(
    spec: VariantSpec,
    settings: EngineSettings,
    options: RuntimeOptions,
    frames: int,
    labels: list[str],
) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": spec.id, "precision": spec.precision}
    engine = Engine(NoFrames(), fps=settings.fps, options=options)
    try:
        engine.load(spec)
    except VariantLoadError as exc:
        return {**row, "error": str(exc)}
    engine.source = make_source(
        settings, engine.input_shape() or (), labels, limit=frames, pipeline=spec.pipeline
    )
    accelerator = engine.accelerator()
    engine.start()
    engine.wait()
    stats = engine.stats()
    engine.close()
    row.update(
        frames=stats.frames,
        errors=stats.errors,
        fps=round(stats.fps, 1),
        p50_ms=stats.latency_p50_ms,
        p95_ms=stats.latency_p95_ms,
        p99_ms=stats.latency_p99_ms,
        cpu_ms=None if stats.cpu_s_per_inference is None else stats.cpu_s_per_inference * 1e3,
        accuracy=stats.accuracy,
        accelerator=accelerator,
    )
    return row


def _print_table(rows: list[dict[str, Any]]) -> None:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = f"{'variant':<26} {'prec':<5} {'frames':>6} {'fps':>8} {'p50 ms':>8} {'p95 ms':>8} "
    header += f"{'p99 ms':>8} {'cpu ms':>7} {'acc %':>6}"
    print(header)
    for r in rows:
        if r.get("error"):
            print(f"{r['variant']:<26} {r['precision']:<5} error: {r['error']}")
            continue
        acc = None if r["accuracy"] is None else r["accuracy"] * 100
        print(
            f"{r['variant']:<26} {r['precision']:<5} {r['frames']:>6} {fmt(r['fps'], '8.1f')} "
            f"{fmt(r['p50_ms'], '8.3f')} {fmt(r['p95_ms'], '8.3f')} {fmt(r['p99_ms'], '8.3f')} "
            f"{fmt(r['cpu_ms'], '7.3f')} {fmt(acc, '6.2f')}"
        )
