"""`lepton build`: one fp32 model in, a signed bundle of measured variants out.

    lepton build --onnx model.onnx --tflite model.tflite \\
        --calib train-images-idx3-ubyte.gz --eval t10k-images-idx3-ubyte.gz --out bundle/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import FASHION_MNIST_LABELS


def default_key_path() -> Path:
    state = os.environ.get("LEPTON_CONTROLLER_STATE_DIR")
    base = Path(state) if state else Path.home() / ".local" / "share" / "lepton"
    return base / "keys" / "signing.pem"


def configure(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group("model (one or more of the same network, fp32)")
    models.add_argument("--onnx", type=Path, metavar="M.onnx", help="fp32 ONNX model")
    models.add_argument("--tflite", type=Path, metavar="M.tflite", help="fp32 TFLite model")
    models.add_argument(
        "--keras", type=Path, metavar="M.keras", help="Keras model (needs the keras extra)"
    )
    models.add_argument(
        "--architecture",
        action="append",
        default=[],
        metavar="NAME=S.onnx[,S.tflite]",
        help="a smaller model of the same task (a student, a pruned copy) built into the same "
        "bundle, in the formats the model has; repeatable (e.g. student50=s.onnx,s.tflite)",
    )
    models.add_argument(
        "--task",
        default=None,
        help="classification, detection, segmentation, regression or raw (default: "
        "classification for one (N, classes) output, else raw: judged by fidelity only)",
    )
    models.add_argument(
        "--describe",
        type=Path,
        metavar="MODEL.toml",
        help="model description: task, labels, image input, detection/segmentation decoding",
    )
    data = parser.add_argument_group(
        "data (IDX files, optionally .gz, .npy arrays, or .npz by input name)"
    )
    data.add_argument("--calib", type=Path, required=True, help="calibration inputs")
    data.add_argument("--eval", type=Path, required=True, help="evaluation inputs")
    data.add_argument(
        "--eval-labels",
        type=Path,
        help="evaluation labels of the task's kind (default: the IDX labels file next to "
        "--eval, 'images-idx3' -> 'labels-idx1'; none: fidelity to fp32 only)",
    )
    data.add_argument(
        "--eval-samples", type=int, default=None, help="evaluate on the first N samples only"
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--key",
        type=Path,
        default=None,
        help=f"Ed25519 signing key, created if missing (default {default_key_path()})",
    )
    parser.add_argument("--name", default=None, help="model name (default: the file's stem)")
    parser.add_argument("--version", default=None, help="version (default: the input's hash)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        help="largest accepted drop of the labelled task metric vs fp32 (accuracy, mAP@0.5, "
        "mIoU), in points (default 1.0)",
    )
    parser.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        help="least cosine similarity of every output to fp32 (default 0.98)",
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help="least agreement with fp32's answers: top-1, detection mAP, mask IoU (default 0.97)",
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="class names, comma-separated, or 'fashion-mnist'",
    )
    parser.add_argument(
        "--skip", action="append", default=[], metavar="VARIANT", help="leave a variant out"
    )
    parser.add_argument(
        "--tflite-quantizer",
        choices=["ai-edge-quantizer", "tensorflow"],
        default="ai-edge-quantizer",
        help="who makes the TFLite fp16/int8 variants (tensorflow needs --keras)",
    )
    parser.add_argument(
        "--input-scale",
        type=_scale,
        default=None,
        metavar="S",
        help="multiply input values by S, e.g. 1/255 for a model trained on [0, 1] pixels; "
        "required for integer data (IDX images): it cannot be guessed",
    )
    parser.add_argument(
        "--input-mean",
        type=_floats,
        default=None,
        metavar="M[,M,M]",
        help="subtract per channel after scaling (e.g. 0.485,0.456,0.406)",
    )
    parser.add_argument(
        "--input-std",
        type=_floats,
        default=None,
        metavar="S[,S,S]",
        help="divide per channel after the mean (e.g. 0.229,0.224,0.225)",
    )
    parser.add_argument("--threads", type=int, default=1, help="runtime threads for timings")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")


def _scale(text: str) -> float:
    """`1/255`, `0.00392` or `1`: a positive number, as a fraction or a decimal."""
    num, _, den = text.partition("/")
    try:
        value = float(num) / (float(den) if den else 1.0)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--input-scale: {text!r} is not a number like 1/255 or 1") from None
    if not value > 0:
        raise UserError(f"--input-scale: {text!r} must be positive")
    return value


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{text!r} is not a comma-separated list of numbers") from None


def _labels_path(images: Path) -> Path | None:
    """The IDX labels file beside IDX images, if there is one."""
    if "images-idx3" not in images.name:
        return None
    path = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
    return path if path.exists() else None


def _architectures(values: list[str]) -> dict[str, tuple[Path | None, Path | None]]:
    """`NAME=S.onnx,S.tflite` -> {NAME: (onnx, tflite)}, the files told apart by suffix."""
    out: dict[str, tuple[Path | None, Path | None]] = {}
    for value in values:
        name, _, files = value.partition("=")
        paths = [Path(f) for f in files.split(",") if f]
        by_suffix = {p.suffix.lower(): p for p in paths}
        if (
            not name
            or not paths
            or set(by_suffix) - {".onnx", ".tflite"}
            or len(by_suffix) != len(paths)
        ):
            raise UserError(
                f"--architecture {value!r}: use NAME=S.onnx, NAME=S.tflite or NAME=S.onnx,S.tflite"
            )
        out[name] = (by_suffix.get(".onnx"), by_suffix.get(".tflite"))
    return out


def _labels(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.lower() == "fashion-mnist":
        return list(FASHION_MNIST_LABELS)
    return [v.strip() for v in value.split(",")]


def run(args: argparse.Namespace) -> int:
    from lepton_edge.controller.factory import missing_modules

    if missing := missing_modules():
        raise UserError(
            f"'lepton build' needs the variant factory ({', '.join(missing)} not installed): "
            "pip install 'lepton-edge[factory]'"
        )
    from lepton_edge.controller.factory.build import build_bundle
    from lepton_edge.controller.factory.data import load_source

    if not (args.onnx or args.tflite or args.keras):
        raise UserError("give a model: --onnx M.onnx, --tflite M.tflite and/or --keras M.keras")
    eval_x: Any = load_source(args.eval, "evaluation data")
    labels_path = args.eval_labels or _labels_path(args.eval)
    eval_y: Any = None
    if labels_path is not None:
        eval_y = (
            labels_path
            if labels_path.suffix == ".json"
            else load_source(labels_path, "evaluation labels")
        )
    if args.eval_samples:
        n = args.eval_samples
        eval_x = {k: v[:n] for k, v in eval_x.items()} if isinstance(eval_x, dict) else eval_x[:n]
        eval_y = eval_y[:n] if eval_y is not None and not isinstance(eval_y, Path) else eval_y
    gates = {"min_cosine": args.min_cosine, "min_agreement": args.min_agreement}
    first = args.onnx or args.tflite or args.keras
    quiet = args.json or not sys.stderr.isatty()
    with _progress(quiet) as report:
        manifest = build_bundle(
            args.out,
            onnx=args.onnx,
            tflite=args.tflite,
            keras=args.keras,
            calib_x=args.calib,
            eval_x=eval_x,
            eval_y=eval_y,
            key=args.key or default_key_path(),
            model_name=args.name or first.stem,
            version=args.version,
            tolerance_points=args.tolerance,
            tolerance={k: v for k, v in gates.items() if v is not None} or None,
            labels=_labels(args.labels),
            description=args.describe,
            task=args.task,
            progress=report,
            skip=args.skip,
            threads=args.threads,
            overwrite=args.overwrite,
            tflite_quantizer=args.tflite_quantizer,
            input_scale=args.input_scale,
            input_mean=args.input_mean,
            input_std=args.input_std,
            architectures=_architectures(args.architecture),
        )
    if args.json:
        print(json.dumps(manifest.model_dump(mode="json"), indent=2))
    else:
        _print_table(manifest, args.out)
    return 0


class _progress:
    """A rich progress bar on stderr over the build's steps (nothing when quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._bar: Any = None

    def __enter__(self) -> Any:
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]building"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task("", total=None)

        def report(done: int, total: int, what: str) -> None:
            self._bar.update(task, completed=done, total=total, description=what)

        return report

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


_METRIC_FIELD = {"accuracy": "accuracy", "mAP@0.5": "map50", "mIoU": "miou", "RMSE": "rmse"}


def _metric_name(manifest: Any) -> str:
    task = manifest.model.task.value if manifest.model else "classification"
    return {"detection": "mAP@0.5", "segmentation": "mIoU", "regression": "RMSE"}.get(
        task, "accuracy"
    )


def _print_table(manifest: Any, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bundle {manifest.bundle_id} in {out}")
    table.add_column("variant", no_wrap=True)
    table.add_column("format / runtime")
    table.add_column("precision")
    metric = _metric_name(manifest)
    for column in ("size KiB", metric, "delta pt", "agreement", "cosine", "p50 ms", "spread"):
        table.add_column(column, justify="right")
    table.add_column("status", no_wrap=True)
    table.add_column("why")

    def num(value: float | None, fmt: str) -> str:
        return "" if value is None else fmt.format(value)

    for v in manifest.variants:
        m = v.metrics
        delta = m.accuracy_delta if m.accuracy_delta is not None else m.metric_delta
        table.add_row(
            v.id,
            f"{v.format.value} / {v.requirements.runtime}",
            v.precision.value,
            f"{v.size_bytes / 1024:.0f}",
            num(getattr(m, _METRIC_FIELD[metric]), "{:.4f}"),
            num(delta, "{:+.2f}"),
            num(m.agreement, "{:.4f}"),
            num(min(f.cosine for f in m.fidelity) if m.fidelity else None, "{:.4f}"),
            num(m.latency_p50_ms, "{:.3f}"),
            num(m.latency_spread, "{:.2f}"),
            "[green]accepted" if v.status == "accepted" else "[red]rejected",
            v.reason,
        )
    for n in manifest.not_built:  # tried, not shipped
        table.add_row(n.id, "", "", "", "", "", "", "", "", "", f"[yellow]{n.status}", n.reason)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
