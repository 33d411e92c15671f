"""The seed's API: `HardwareAdapter().fit(model, x_train, y_train)`, then `evaluate(x, y)`.

A thin layer over `build_bundle` for notebook users:

    from lepton_edge import HardwareAdapter
    adapter = HardwareAdapter(model_name="fashion", input_scale=1 / 255)  # uint8 pixels
    adapter.fit(keras_model, x_train, y_train)
    rows = adapter.evaluate(x_test, y_test)   # typed rows; print(rows) is an aligned table

Without `out_dir` the bundle goes to `./lepton-bundle/` (one log line says so). `fit`
calibrates on a seeded random sample of `x_train` and scores the variants (for the tolerance
check) on a disjoint held-out sample of it; `evaluate` re-scores every variant on the data
you give it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lepton_edge.controller.factory import data as data_mod
from lepton_edge.controller.factory import describe as describe_mod
from lepton_edge.controller.factory import evaluate, quality
from lepton_edge.controller.factory.build import Progress, build_bundle, variant_path
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import Manifest, Task, Variant
from lepton_edge.shared.signing import generate_key

log = logging.getLogger(__name__)

DEFAULT_OUT_DIR = Path("lepton-bundle")


@dataclass(frozen=True)
class VariantRow:
    """One variant as `fit` measured it, or as `evaluate` re-scored it on your data."""

    id: str
    format: str
    precision: str
    scheme: str
    status: str
    reason: str
    size_bytes: int
    accuracy: float | None
    precision_macro: float | None
    recall_macro: float | None
    f1_macro: float | None
    accuracy_delta: float | None
    agreement: float | None
    min_cosine: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    throughput_ips: float | None
    peak_memory_mb: float | None
    confusion: list[list[int]] | None = None


class VariantTable(list[VariantRow]):
    """The rows of `evaluate`; `str()` is an aligned table, one line per variant."""

    COLUMNS = (
        ("variant", "id", "{}"),
        ("status", "status", "{}"),
        ("size KiB", "size_bytes", "{:.0f}"),
        ("accuracy", "accuracy", "{:.4f}"),
        ("delta pt", "accuracy_delta", "{:+.2f}"),
        ("agreement", "agreement", "{:.4f}"),
        ("cosine", "min_cosine", "{:.4f}"),
        ("p50 ms", "latency_p50_ms", "{:.3f}"),
        ("images/s", "throughput_ips", "{:.0f}"),
    )

    def __str__(self) -> str:
        def cell(row: VariantRow, attr: str, fmt: str) -> str:
            value = getattr(row, attr)
            if value is None:
                return "–"
            return fmt.format(value / 1024 if attr == "size_bytes" else value)

        grid = [[title for title, _, _ in self.COLUMNS]]
        grid += [[cell(r, attr, fmt) for _, attr, fmt in self.COLUMNS] for r in self]
        widths = [max(len(line[i]) for line in grid) for i in range(len(self.COLUMNS))]
        return "\n".join(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
            for line in grid
        )


class HardwareAdapter:
    """Build once with `fit`, then compare every variant with `evaluate`."""

    def __init__(
        self,
        out_dir: Path | str | None = None,
        *,
        key: Ed25519PrivateKey | Path | str | None = None,
        model_name: str = "model",
        tolerance_points: float = 1.0,
        labels: list[str] | None = None,
        calibration_samples: int = 500,
        holdout_samples: int = 1000,
        seed: int = 0,
        threads: int = 1,
        progress: Progress | None = None,
        input_scale: float | None = None,
        task: str | None = None,
        description: Any = None,
    ) -> None:
        if out_dir is None:
            out_dir = DEFAULT_OUT_DIR.absolute()
            log.info("HardwareAdapter: the bundle goes to %s (pass out_dir= to choose)", out_dir)
        self.bundle_dir = Path(out_dir).absolute()  # relative paths: from where it was made
        self.key = key if key is not None else generate_key()
        self.model_name = model_name
        self.tolerance_points = tolerance_points
        self.labels = labels
        self.calibration_samples = calibration_samples
        self.holdout_samples = holdout_samples
        self.seed = seed
        self.threads = threads
        self.progress = progress
        self.input_scale = input_scale  # e.g. 1/255 for uint8 pixels and a [0, 1] model
        self.task = task
        self.description = description  # see controller.factory.describe
        self.manifest: Manifest | None = None
        self.evaluate_results = VariantTable()

    def fit(
        self,
        model: Any,
        x_train: np.ndarray | dict[str, np.ndarray],
        y_train: np.ndarray | None = None,
        *,
        tflite_quantizer: str = "ai-edge-quantizer",
        prune: float | bool = False,
        distill: float | bool = False,
        epochs: int = 2,
    ) -> HardwareAdapter:
        """Build the bundle from `model`: a Keras model, a `.keras` / `.onnx` / `.tflite`
        path, or a pair `(onnx_path, tflite_path)` of the same network. Without `y_train`
        the variants are judged by fidelity to fp32 only. `tflite_quantizer`: see
        `build_bundle` ("tensorflow" for TensorFlow's converter, Keras models only).

        A Keras model can bring smaller architectures into the same bundle: `prune` (True =
        0.5, or the fraction of filters to remove) adds the model pruned and fine-tuned for
        `epochs`; `distill` (True = 0.5, or the student's width) adds a student distilled from
        it for `epochs`. Both train on `x_train` minus the held-out part."""
        arrays = (
            {k: np.asarray(v) for k, v in x_train.items()}
            if isinstance(x_train, dict)
            else {"": np.asarray(x_train)}
        )
        samples = min(len(a) for a in arrays.values())
        if y_train is not None and samples != len(y_train):
            raise UserError(f"x_train has {samples} samples but y_train {len(y_train)}")
        if samples < 2:
            raise UserError("x_train needs at least 2 samples (calibration and held-out)")

        def take(rows: np.ndarray) -> Any:
            picked = {k: a[np.sort(rows)] for k, a in arrays.items()}
            return picked.get("", picked)  # one unnamed array, or the dict by input name

        order = np.random.default_rng(self.seed).permutation(samples)
        holdout = order[: min(self.holdout_samples, len(order) // 2)]
        calib = order[len(holdout) : len(holdout) + self.calibration_samples]
        sources = _sources(model)
        architectures = self._smaller(
            sources, arrays, y_train, order[len(holdout) :], prune, distill, epochs
        )
        self.manifest = build_bundle(
            self.bundle_dir,
            **sources,
            calib_x=take(calib),
            eval_x=take(holdout),
            eval_y=None if y_train is None else np.asarray(y_train)[np.sort(holdout)],
            key=self.key,
            model_name=self.model_name,
            tolerance_points=self.tolerance_points,
            labels=self.labels,
            progress=self.progress,
            threads=self.threads,
            overwrite=True,
            tflite_quantizer=tflite_quantizer,
            input_scale=self.input_scale,
            task=self.task,
            description=self.description,
            architectures=architectures,
        )
        self.evaluate_results = VariantTable(_row(v) for v in self.manifest.variants)
        return self

    def _smaller(
        self,
        sources: dict[str, Any],
        arrays: dict[str, np.ndarray],
        y_train: np.ndarray | None,
        rows: np.ndarray,
        prune: float | bool,
        distill: float | bool,
        epochs: int,
    ) -> dict[str, Any]:
        """The pruned model and the student asked for, trained on `rows` of the data."""
        if not prune and not distill:
            return {}
        from lepton_edge.controller.factory import distill as distill_mod
        from lepton_edge.controller.factory import keras as keras_mod
        from lepton_edge.controller.factory import prune as prune_mod

        model = sources.get("keras")
        if model is None or list(arrays) != [""]:
            raise UserError("prune= and distill= need a Keras model with one input")
        if not keras_mod.is_keras_model(model):
            model = keras_mod.load_keras(Path(model))
            sources["keras"] = model
        if y_train is None:
            raise UserError("prune= and distill= train on labels: pass y_train")
        rows = np.sort(rows)
        x = arrays[""][rows].astype(np.float32) * np.float32(self.input_scale or 1.0)
        y = np.asarray(y_train)[rows]
        out: dict[str, Any] = {}
        if prune:
            fraction = 0.5 if prune is True else float(prune)
            pruned, _ = prune_mod.prune(model, x, y, fraction=fraction, epochs=epochs)
            out[f"pruned{round(fraction * 100)}"] = pruned
        if distill:
            width = 0.5 if distill is True else float(distill)
            student = distill_mod.derive_student(model, width)
            out[f"student{round(width * 100)}"] = distill_mod.distill(
                model, student, x, y, epochs=epochs, seed=self.seed
            )
        return out

    def evaluate(self, x_test: np.ndarray, y_test: np.ndarray | None = None) -> VariantTable:
        """Run every variant on `x_test`: fidelity and agreement with fp32, and with
        `y_test` the task metric; one row per variant (size and speed from the build)."""
        if self.manifest is None or self.manifest.model is None:
            raise UserError("call fit(model, x_train, y_train) before evaluate")
        manifest, model = self.manifest, self.manifest.model
        described = next((i.image for i in model.inputs if i.image is not None), None)
        scaling = data_mod.Scaling(
            manifest.input_scale,
            tuple(described.mean) if described else (),
            tuple(described.std) if described else (),
        )
        feeds = data_mod.prepare_feeds(x_test, list(model.inputs), "x_test", scaling)
        size = describe_mod.image_size(model) if model.task in IMAGE_TASKS else (0, 0)
        labels = (
            None
            if y_test is None
            else data_mod.prepare_labels(y_test, model, len(feeds), manifest.num_classes, size)
        )
        reference: dict[str, quality.Outputs] = {}
        baseline: dict[str, dict[str, Any]] = {}
        rows = []
        for variant in sorted(manifest.variants, key=lambda v: v.precision != "fp32"):
            path = variant_path(self.bundle_dir, variant)
            runtime = variant.requirements.runtime
            outputs = evaluate.Predictor(path, variant.format, self.threads, runtime).run_all(feeds)
            if variant.precision == "fp32":
                reference[variant.format] = outputs
            ref = reference[variant.format]
            scores: dict[str, Any] = {
                "agreement": quality.agreement(model, ref, outputs, size),
                "min_cosine": min(f.cosine for f in quality.fidelity(model, ref, outputs)),
            }
            if labels is not None:
                measured = quality.task_metrics(model, outputs, labels, manifest.num_classes, size)
                if variant.precision == "fp32":
                    baseline[variant.format] = measured
                scores |= quality.with_deltas(measured, baseline.get(variant.format))
            wanted = {f.name for f in fields(VariantRow)}
            rows.append(_row(variant, **{k: v for k, v in scores.items() if k in wanted}))
        order = [v.id for v in manifest.variants]
        self.evaluate_results = VariantTable(sorted(rows, key=lambda r: order.index(r.id)))
        return self.evaluate_results


IMAGE_TASKS = (Task.DETECTION, Task.SEGMENTATION)


def _sources(model: Any) -> dict[str, Any]:
    if isinstance(model, tuple) and len(model) == 2:
        return {"onnx": Path(model[0]), "tflite": Path(model[1])}
    if isinstance(model, (str, Path)):
        path = Path(model)
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return {"onnx": path}
        if suffix == ".tflite":
            return {"tflite": path}
        if suffix in {".keras", ".h5"}:
            return {"keras": path}
        raise UserError(f"{path}: give a .onnx, .tflite or .keras model")
    return {"keras": model}


def _row(variant: Variant, **measured: Any) -> VariantRow:
    """The variant's build-time figures, with `measured` (from `evaluate`) on top."""
    wanted = {f.name for f in fields(VariantRow)} - {"confusion"}
    fidelity = variant.metrics.fidelity
    values: dict[str, Any] = {
        **variant.model_dump(mode="json", include=wanted),
        **variant.metrics.model_dump(include=wanted),
        "min_cosine": min(f.cosine for f in fidelity) if fidelity else None,
    }
    return VariantRow(**(values | measured))
