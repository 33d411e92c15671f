"""The build: one fp32 model in (ONNX, TFLite, both, or Keras), a signed bundle out.

Each variant is made, run on the evaluation data and judged against its format's fp32
(fidelity always, the task metric when labels exist, see `quality`), then all variants of a
format are timed together in interleaved rounds, and each is kept under its sha256. A variant
outside the tolerance is recorded as rejected with the reason, and the next scheme of its
precision is tried (static int8 -> static int8 with the most sensitive layers kept float:
layers are ranked by the harm each does when quantized alone, and the 1, 2, 4, ... worst are
kept float until a slice of the evaluation data is within the tolerance; dynamic int8 is
always built as well). A few evaluation inputs and fp32's outputs on them go into the bundle
as its probe set, for the on-device check.
Everything is written to a temporary folder next to `out_dir` and renamed into place at the
end, so a failed build never leaves a half-written bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lepton_edge.controller.factory import data as data_mod
from lepton_edge.controller.factory import describe as describe_mod
from lepton_edge.controller.factory import evaluate, quality
from lepton_edge.controller.factory import openvino as openvino_mod
from lepton_edge.controller.factory.data import Feeds
from lepton_edge.shared.bundle import verify_bundle
from lepton_edge.shared.errors import SignatureError, UserError
from lepton_edge.shared.manifest import (
    MANIFEST_FILE,
    RUNTIME_FOR_FORMAT,
    Manifest,
    ModelDescription,
    ModelFormat,
    NotBuilt,
    Precision,
    ProbeSet,
    Requirements,
    Task,
    TensorSpec,
    Tolerance,
    Variant,
    VariantMetrics,
    sha256_file,
)
from lepton_edge.shared.signing import load_or_create_private_key, sign_manifest

#: Progress callback: (steps done, steps in all, what is happening now).
Progress = Callable[[int, int, str], None]

#: Calibration uses at most this many samples (the first ones: same data, same file).
MAX_CALIBRATION_SAMPLES = 1000

ALL_VARIANTS = (
    "onnx-fp32",
    "onnx-fp16",
    "onnx-int8-static",
    "onnx-int8-dynamic",
    "openvino-int8",
    "tflite-fp32",
    "tflite-fp16",
    "tflite-int8-static",
    "tflite-int8-dynamic",
    "tflite-int8-weight-only",
)


@dataclass
class _Plan:
    """One variant to make: its id, precision and how to make it into a path."""

    id: str
    format: ModelFormat
    precision: Precision
    make: Callable[[Path], str]
    fallback: _Plan | None = None
    #: what runs it, when not its format's usual runtime (openvino for an ONNX file)
    runtime: str | None = None


@dataclass
class _Made:
    """A variant made and judged, waiting for its format's timing round."""

    plan: _Plan
    path: Path
    scheme: str
    metrics: dict[str, Any]
    reason: str | None


@dataclass
class _Job:
    out_dir: Path
    staging: Path
    model: ModelDescription
    calib: Feeds
    eval: Feeds
    labels: data_mod.Labels | None
    num_classes: int
    size: tuple[int, int] | None
    tolerance: Tolerance
    threads: int
    budget: evaluate.SpeedBudget
    progress: Progress | None
    total: int
    done: int = 0
    made: list[_Made] = field(default_factory=list)
    not_built: list[NotBuilt] = field(default_factory=list)
    reference: dict[ModelFormat, quality.Outputs] = field(default_factory=dict)
    baseline: dict[ModelFormat, VariantMetrics] = field(default_factory=dict)
    #: the model these variants are made from: "base", or a smaller one derived from it
    architecture: str = "base"
    parameters: int | None = None
    macs: int | None = None

    @property
    def work(self) -> Path:
        """Where this architecture's variants are made (fp32 first: the others read it)."""
        return self.staging / "work" / ("" if self.architecture == "base" else self.architecture)

    @property
    def prefix(self) -> str:
        return "" if self.architecture == "base" else f"{self.architecture}-"

    def step(self, what: str) -> None:
        if self.progress:
            self.progress(self.done, self.total, what)

    def judge(
        self, path: Path, fmt: ModelFormat, count: int | None = None, runtime: str | None = None
    ) -> tuple[dict[str, Any], str | None]:
        """Run the variant at `path` on the first `count` (default all) evaluation samples:
        its metrics against fp32 (and the labels), and why it is outside the tolerance."""
        feeds = self.eval if count is None else self.eval.head(count)
        outputs = evaluate.Predictor(path, fmt, self.threads, runtime).run_all(feeds)
        reference = self.reference[fmt][: len(feeds)]
        size = self.size or (0, 0)
        metrics: dict[str, Any] = {
            "fidelity": quality.fidelity(self.model, reference, outputs),
            "agreement": quality.agreement(self.model, reference, outputs, size),
        }
        baseline: dict[str, Any] | None = None
        if self.labels is not None:
            labels = self.labels[: len(feeds)]
            metrics |= quality.task_metrics(self.model, outputs, labels, self.num_classes, size)
            if count is None and fmt in self.baseline:
                baseline = self.baseline[fmt].model_dump()
            elif count is not None:
                baseline = quality.task_metrics(
                    self.model, reference, labels, self.num_classes, size
                )
        metrics = quality.with_deltas(metrics, baseline)
        base = self.baseline.get(fmt) if count is None else None
        checked = VariantMetrics(
            **{k: v for k, v in metrics.items() if k in VariantMetrics.model_fields}
        )
        return metrics, quality.judge(checked, base, self.tolerance)


def build_bundle(
    out_dir: Path | str,
    *,
    onnx: Path | str | None = None,
    tflite: Path | str | None = None,
    keras: Any = None,
    calib_x: data_mod.DataSource,
    eval_x: data_mod.DataSource,
    eval_y: Any = None,
    key: Ed25519PrivateKey | Path | str,
    model_name: str,
    version: str | None = None,
    tolerance_points: float = 1.0,
    tolerance: Tolerance | dict[str, float] | None = None,
    labels: list[str] | None = None,
    description: describe_mod.DescriptionSource | None = None,
    task: str | None = None,
    progress: Progress | None = None,
    skip: Collection[str] = (),
    threads: int = 1,
    budget: evaluate.SpeedBudget | None = None,
    overwrite: bool = False,
    tflite_quantizer: str = "ai-edge-quantizer",
    input_scale: float | None = None,
    input_mean: list[float] | None = None,
    input_std: list[float] | None = None,
    architectures: dict[str, Any] | None = None,
    architecture_points: float = 2.0,
) -> Manifest:
    """Build, measure and sign every variant of one model into the bundle folder `out_dir`.

    `onnx` / `tflite`: fp32 model files (either or both); `keras`: a Keras model or a `.keras`
    file, converted to both with TensorFlow (the `keras` extra). Data: arrays, IDX / `.npy`
    files, or for several inputs an `.npz` file / dict by input name (see `data`); `eval_y`
    (optional) are labels of the task's kind. `description` (dict, TOML/JSON file) and
    `task` say what the model is (see `describe`). `input_scale` (and `input_mean` /
    `input_std`) apply to the image input: required for integer pixels, e.g. 1/255; recorded
    in the manifest for the agent. `tolerance_points` / `tolerance`: see `Tolerance`.
    `key`: the controller's Ed25519 key or its PEM path (created if missing). `skip`:
    variant ids to leave out. `threads`: runtime threads for the timings.
    `tflite_quantizer="tensorflow"` makes the TFLite fp16/int8 variants of a Keras model with
    TensorFlow's converter instead of ai-edge-quantizer (weight-only int8 and the
    sensitive-layer fallback stay with ai-edge-quantizer). Schemes that fail or change nothing
    go to the manifest's `not_built`. `architectures`: smaller models of the same task (name
    -> Keras model or `(onnx_path, tflite_path)`, e.g. {"pruned50": ..., "student25": ...}),
    each built into the same schemes (ids `name-onnx-int8-static`, ...); each may lose
    `architecture_points` of the labelled metric against the base fp32. Returns the signed
    manifest, which is also written to `out_dir/manifest.json`."""
    out_dir = Path(out_dir).absolute()  # the measuring child runs elsewhere: no relative paths
    if tolerance_points < 0:
        raise UserError(f"tolerance {tolerance_points} must be >= 0 points")
    if tflite_quantizer not in {"ai-edge-quantizer", "tensorflow"}:
        raise UserError(
            f"tflite_quantizer {tflite_quantizer!r}: use ai-edge-quantizer or tensorflow"
        )
    if tflite_quantizer == "tensorflow" and keras is None:
        raise UserError("TensorFlow's TFLite quantizer needs the Keras model: pass keras=...")
    if any(v.endswith("-fp32") for v in skip):
        raise UserError("the fp32 variants are the accuracy baseline and cannot be skipped")
    unknown = set(skip) - set(ALL_VARIANTS)
    if unknown:
        raise UserError(f"unknown variant ids to skip: {sorted(unknown)}; known: {ALL_VARIANTS}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir} exists and is not empty: choose a new folder or overwrite it")
    architectures = dict(architectures or {})
    for name, smaller in architectures.items():
        if name == "base" or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
            raise UserError(
                f"architecture name {name!r}: use lower-case letters, digits and _ (e.g. "
                "student25), not 'base'"
            )
        for path in smaller if isinstance(smaller, tuple) else ():  # before any work is done
            if path is not None and not Path(path).is_file():
                raise UserError(f"architecture {name}: model file {path} does not exist")
    given = describe_mod.read_description(description)
    tolerances = _tolerance(
        tolerance if tolerance is not None else given.get("tolerance"), tolerance_points
    )
    if architectures:
        tolerances = tolerances.model_copy(update={"architecture_points": architecture_points})
    signing_key = key if isinstance(key, Ed25519PrivateKey) else _load_key(Path(key))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    scaling = data_mod.Scaling(input_scale, tuple(input_mean or ()), tuple(input_std or ()))
    try:
        manifest = _build(
            out_dir,
            staging,
            onnx=Path(onnx) if onnx else None,
            tflite=Path(tflite) if tflite else None,
            keras=keras,
            calib_x=calib_x,
            eval_x=eval_x,
            eval_y=eval_y,
            key=signing_key,
            model_name=model_name,
            version=version,
            tolerance=tolerances,
            labels=labels if labels is not None else given.get("labels"),
            given=given,
            task=task,
            progress=progress,
            skip=set(skip),
            threads=threads,
            budget=budget or evaluate.SpeedBudget(),
            tflite_quantizer=tflite_quantizer,
            scaling=scaling,
            architectures=architectures,
        )
        _publish(staging, out_dir)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tolerance(value: Tolerance | dict[str, float] | None, points: float) -> Tolerance:
    if isinstance(value, Tolerance):
        return value
    fields: dict[str, float] = {"points": points, **(value or {})}
    unknown = sorted(set(fields) - set(Tolerance.model_fields))
    if unknown:
        raise UserError(f"unknown tolerance {unknown}: known {sorted(Tolerance.model_fields)}")
    try:
        return Tolerance(**fields)
    except ValueError as exc:
        raise UserError(f"tolerance: {str(exc).splitlines()[-1].strip()}") from None


def _load_key(path: Path) -> Ed25519PrivateKey:
    try:
        return load_or_create_private_key(path)
    except (OSError, ValueError, SignatureError) as exc:
        raise UserError(f"cannot use signing key {path}: {exc}") from None


def _publish(staging: Path, out_dir: Path) -> None:
    """Swap the finished bundle into place; the old folder (if any) goes only after."""
    shutil.rmtree(staging / "work", ignore_errors=True)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{time.time_ns()}")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _model_io(
    onnx_path: Path | None, tflite_path: Path | None
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The first file's inputs and outputs, checked to agree with the other's by position
    (names differ between formats; the order is what every format shares)."""
    specs: dict[Path, tuple[list[TensorSpec], list[TensorSpec]]] = {}
    for fmt, path in ((ModelFormat.ONNX, onnx_path), (ModelFormat.TFLITE, tflite_path)):
        if path is not None:
            specs[path] = evaluate.tensor_specs(path, fmt)
    (first_path, first), *rest = specs.items()
    for other_path, other in rest:
        if not _same_tensors([*first[0], *first[1]], [*other[0], *other[1]]) or len(
            first[0]
        ) != len(other[0]):
            raise UserError(
                f"{first_path} and {other_path} are not the same network: inputs/outputs "
                f"{[s.shape for s in [*first[0], *first[1]]]} vs "
                f"{[s.shape for s in [*other[0], *other[1]]]}"
            )
    return first


def _same_tensors(a: list[TensorSpec], b: list[TensorSpec]) -> bool:
    """Same count, dtypes and ranks, and no known dimension that differs (batch aside)."""

    def fits(x: TensorSpec, y: TensorSpec) -> bool:
        dims = zip(x.shape[1:], y.shape[1:], strict=False)
        known = all(p is None or q is None or p == q for p, q in dims)
        return x.dtype == y.dtype and len(x.shape) == len(y.shape) and known

    return len(a) == len(b) and all(fits(x, y) for x, y in zip(a, b, strict=True))


def _num_classes(model: ModelDescription, labels: list[str] | None) -> int:
    """Classes the task's answers range over (1 for regression and raw)."""
    if model.task is Task.CLASSIFICATION:
        return int(model.outputs[model.index(model.output or "")].shape[1] or 1)
    if model.task is Task.DETECTION:
        decoding = model.detection
        assert decoding is not None
        if decoding.kind == "yolo":
            dims = [d for d in model.outputs[model.index(decoding.boxes)].shape[1:] if d]
            return max(min(dims) - 4, 1) if dims else max(len(labels or []), 1)
        scores = model.outputs[model.index(decoding.scores or "")].shape
        return int(scores[-1] or len(labels or []) or 1) if len(scores) == 3 else 1
    if model.task is Task.SEGMENTATION:
        mask = model.segmentation
        assert mask is not None
        shape = model.outputs[model.index(mask.output)].shape
        channels = shape[mask.class_axis] if shape else None
        return 2 if channels in (None, 1) else int(channels)
    return 1


def _build(
    out_dir: Path,
    staging: Path,
    *,
    onnx: Path | None,
    tflite: Path | None,
    keras: Any,
    calib_x: data_mod.DataSource,
    eval_x: data_mod.DataSource,
    eval_y: Any,
    key: Ed25519PrivateKey,
    model_name: str,
    version: str | None,
    tolerance: Tolerance,
    labels: list[str] | None,
    given: dict[str, Any],
    task: str | None,
    progress: Progress | None,
    skip: set[str],
    threads: int,
    budget: evaluate.SpeedBudget,
    tflite_quantizer: str,
    scaling: data_mod.Scaling,
    architectures: dict[str, Any],
) -> Manifest:
    from lepton_edge.controller.factory import onnx as onnx_mod
    from lepton_edge.controller.factory import tflite as tflite_mod

    work = staging / "work"
    work.mkdir()
    with contextlib.suppress(ModuleNotFoundError):
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # its warnings are not the user's problem
    keras_model = None
    if keras is not None:
        keras_model, onnx, tflite = _from_keras(keras, work, onnx, tflite)
    if onnx is None and tflite is None:
        raise UserError("no model given: pass an fp32 ONNX file, a .tflite file, or both")
    for path in (onnx, tflite):
        if path is not None and not path.is_file():
            raise UserError(f"model file {path} does not exist")
    if onnx is not None:
        onnx_mod.load(onnx)
    if tflite is not None:
        tflite_mod.check(tflite)
    inputs, outputs = _model_io(onnx, tflite)
    # The image input's scaling: the flags over the description's [input] table.
    flags = {"scale": scaling.scale, "mean": list(scaling.mean), "std": list(scaling.std)}
    image_fields = {**(given.get("input") or {}), **{k: v for k, v in flags.items() if v}}
    scaling = data_mod.Scaling(
        image_fields.get("scale"),
        tuple(image_fields.get("mean", ())),
        tuple(image_fields.get("std", ())),
    )
    specs: list[TensorSpec] = list(inputs)
    calib = data_mod.prepare_feeds(calib_x, specs, "calibration data", scaling)
    calib = calib.head(MAX_CALIBRATION_SAMPLES)
    ex = data_mod.prepare_feeds(eval_x, specs, "evaluation data", scaling)
    image = None
    if image_fields and len(inputs[0].shape) == 4:  # sized by the data where it is dynamic
        image = describe_mod.image_input(inputs[0], image_fields, ex.shapes()[0])
    given = {k: v for k, v in given.items() if k != "input"}
    model = describe_mod.describe(inputs, outputs, given, task, image)
    model = describe_mod.with_build_shapes(model, ex.shapes())
    num_classes = _num_classes(model, labels)
    if (
        labels
        and model.task in (Task.CLASSIFICATION, Task.DETECTION)
        and len(labels) != num_classes
    ):
        raise UserError(f"{len(labels)} labels given but the model has {num_classes} classes")
    size = (
        describe_mod.image_size(model)
        if model.task in (Task.DETECTION, Task.SEGMENTATION)
        else None
    )
    ey = (
        None
        if eval_y is None
        else data_mod.prepare_labels(eval_y, model, len(ex), num_classes, size or (0, 0))
    )

    if keras_model is not None:
        _check_against_keras(keras_model, onnx, tflite, ex.head(KERAS_CHECK_SAMPLES), threads)
    job = _Job(
        out_dir=out_dir,
        staging=staging,
        model=model,
        calib=calib,
        eval=ex,
        labels=ey,
        num_classes=num_classes,
        size=size,
        tolerance=tolerance,
        threads=threads,
        budget=budget,
        progress=progress,
        total=0,
    )
    job.parameters, job.macs = _figures(keras_model, onnx)
    plans: list[_Plan] = []
    if onnx is not None:
        plans += _onnx_plans(onnx, work, job)
    if tflite is not None:
        by_tensorflow = keras_model if tflite_quantizer == "tensorflow" else None
        plans += _tflite_plans(tflite, work, job, by_tensorflow)
    plans = [p for p in plans if p.id not in skip]
    missing = openvino_mod.missing_module()
    if onnx is not None and missing is not None and "openvino-int8" not in skip:
        job.not_built.append(
            NotBuilt(
                id="openvino-int8",
                status="skipped",
                reason=f"{missing} is not installed here: pip install 'lepton-edge[factory]'",
            )
        )
    job.total = len(plans) + 2
    for plan in plans:
        _run_plan(job, plan)
    derived = [
        _derived_job(job, name, model, inputs, outputs, skip)
        for name, model in architectures.items()
    ]
    variants = _timed_variants([job, *derived])
    for smaller in derived:
        job.not_built += smaller.not_built
    variants = [_against_base(job, derived, v) for v in variants]

    job.step("signing the manifest")
    sources = [p.read_bytes() for p in (onnx, tflite) if p is not None]
    version = version or hashlib.sha256(b"".join(sources)).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-") or "model"
    manifest = Manifest(
        bundle_id=f"{slug}-{version}"[:128],
        model_name=model_name,
        version=version,
        created_at=time.time(),
        num_classes=num_classes,
        labels=list(labels or []),
        tolerance_points=tolerance.points,
        baseline={
            v.format: v.id
            for v in variants
            if v.precision is Precision.FP32 and v.architecture == "base"
        },
        variants=variants,
        not_built=job.not_built,
        input_scale=scaling.scale,
        model=model,
        tolerance=tolerance,
        probe=_write_probe(job),
    )
    signed = sign_manifest(manifest, key)
    (staging / MANIFEST_FILE).write_text(signed.model_dump_json(indent=2) + "\n")
    job.done += 1
    job.step("done")
    return signed


#: Evaluation samples that travel in the bundle, with fp32's outputs, for the device check.
PROBE_SET_SAMPLES = 16


def _write_probe(job: _Job) -> ProbeSet:
    """The probe set: the first evaluation inputs and each format's fp32 outputs on them."""
    count = min(PROBE_SET_SAMPLES, len(job.eval))
    feeds = job.eval.head(count)
    arrays = {f"input{i}": a for i, a in enumerate(feeds.arrays)}
    for fmt, outputs in job.reference.items():
        for j in range(len(job.model.outputs)):
            arrays[f"{fmt.value}.output{j}"] = np.stack([o[j] for o in outputs[:count]])
    path = job.staging / "work" / "probe.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    digest = sha256_file(path)
    probe = ProbeSet(sha256=digest, size_bytes=path.stat().st_size, samples=count)
    shutil.copyfile(path, job.staging / probe.filename)
    return probe


def _from_keras(
    model: Any, work: Path, onnx: Path | None, tflite: Path | None
) -> tuple[Any, Path, Path]:
    from lepton_edge.controller.factory import keras as keras_mod

    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise UserError(f"Keras model file {path} does not exist")
        model = keras_mod.load_keras(path)
    elif not keras_mod.is_keras_model(model):
        raise UserError(
            f"{type(model).__name__} is not a Keras model: pass a keras.Model, a .keras file, "
            "or ONNX/TFLite files"
        )
    for target in ("ONNX", "TFLite"):
        try:
            if target == "ONNX":
                onnx = onnx or keras_mod.to_onnx(model, work / "keras.onnx")
            else:
                tflite = tflite or keras_mod.to_tflite(model, work / "keras.tflite")
        except UserError:
            raise
        except Exception as exc:
            raise UserError(_conversion_error(model, exc, target)) from None
    assert onnx is not None and tflite is not None
    return model, onnx, tflite


def _conversion_error(model: Any, exc: BaseException, target: str) -> str:
    """One line naming the Keras layer the converter choked on and what to try."""
    text = str(exc)
    layers = {layer.name: layer for layer in getattr(model, "layers", [])}
    scopes = re.findall(r"/([A-Za-z][\w]*?)(?:_\d+)?/", text)
    layer = next((layers[n] for n in scopes if n in layers), None)
    problem = re.search(r"'(tf\.\w+)' op ([^;\n\]]+)", text)
    why = f"{problem.group(1)} {problem.group(2).strip()}" if problem else _first_line(exc)
    if layer is None:
        return f"TensorFlow could not convert the Keras model to {target}: {why[:300]}"
    kind = type(layer).__name__
    hint = (
        "give it a fixed batch (keras.Input(shape, batch_size=1)) or unroll=True, or pass "
        "--onnx/--tflite files you exported yourself"
        if kind in {"LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional"}
        else "replace that layer, or pass --onnx/--tflite files you exported yourself"
    )
    return (
        f"TensorFlow could not convert the Keras model to {target}: layer {layer.name!r} "
        f"({kind}): {why[:200]}; {hint}"
    )


#: Evaluation samples on which the fp32 files must agree with the Keras model they came from.
KERAS_CHECK_SAMPLES = 256
#: Least top-1 agreement (classifiers) or output cosine (other tasks) with Keras; below it
#: the file computes another function.
KERAS_AGREEMENT = 0.99


def _check_against_keras(
    model: Any, onnx: Path | None, tflite: Path | None, feeds: Feeds, threads: int
) -> None:
    """The source model is the reference: each fp32 file must compute what the Keras model
    computes on the evaluation inputs (catches a wrong file passed beside it, or a conversion
    that changed the function), else one line and nothing is built."""
    given = feeds.arrays if len(feeds.arrays) > 1 else feeds.arrays[0]
    predicted = model.predict(given, verbose=0)
    reference = np.asarray(predicted[0] if isinstance(predicted, (list, tuple)) else predicted)
    for fmt, path in ((ModelFormat.ONNX, onnx), (ModelFormat.TFLITE, tflite)):
        if path is None:
            continue
        runs = evaluate.Predictor(path, fmt, threads).run_all(feeds)
        got = np.concatenate([r[0] for r in runs]).reshape(reference.shape)
        if reference.ndim == 2 and reference.shape[1] > 1:
            score, what = float(np.mean(got.argmax(-1) == reference.argmax(-1))), "agrees"
        else:
            a, b = reference.ravel().astype(np.float64), got.ravel().astype(np.float64)
            score = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0))
            what = "has output cosine"
        if score < KERAS_AGREEMENT:
            raise UserError(
                f"the fp32 {fmt.value} model {path.name} {what} with the Keras model on only "
                f"{score:.1%} of {len(feeds)} evaluation inputs: it is not that model's export "
                "(give only the Keras model, or files exported from it)"
            )


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


_OP_PATTERNS = (
    r"operator \((\w+)\)",  # ONNX type checker
    r"implementation for (\w+)\(",  # ONNX Runtime kernel lookup
    r"[Uu]nsupported op(?:eration)?[: ]+'?(\w+)",  # quantizers
)


def _op_named_in(message: str) -> str | None:
    for pattern in _OP_PATTERNS:
        found = re.search(pattern, message)
        if found:
            return found.group(1)
    return None


#: Evaluation samples the fallback's search judges each candidate on.
PROBE_SAMPLES = 500


def _make_mixed(
    out: Path,
    ranked: list[tuple[str, float]],
    make: Callable[[Path, list[str]], str],
    job: _Job,
    fmt: ModelFormat,
    runtime: str | None = None,
) -> str:
    """Keep the 1, 2, 4, ... most harmful layers float (at most half of them) until the
    variant is within the tolerance on a slice of the evaluation data; write it to `out`."""
    limit = max(1, len(ranked) // 2)
    count, scheme, keep = 1, "", []
    while True:
        keep = [name for name, _ in ranked[:count]]
        scheme = make(out, keep)
        _, why = job.judge(out, fmt, PROBE_SAMPLES, runtime)
        if why is None or count >= limit:
            break
        count = min(count * 2, limit)
    names = ", ".join(name if len(name) <= 40 else name[:37] + "..." for name in keep)
    return (
        f"{scheme} (float: {len(keep)} of {len(ranked)} weighted layers, the most harmful "
        f"when quantized alone: {names})"
    )


def _onnx_plans(source: Path, work: Path, job: _Job) -> list[_Plan]:
    from lepton_edge.controller.factory import onnx as m

    fp32 = work / "onnx-fp32.onnx"
    calib = job.calib

    def keep_sensitive(out: Path) -> str:
        ranked = m.sensitivity(fp32, calib, job.eval.head(64), work)
        cache = m.calibration_cache(work)

        def make(path: Path, keep: list[str]) -> str:
            return m.make_int8_static(fp32, path, calib, keep_float=keep, calibration_cache=cache)

        return _make_mixed(out, ranked, make, job, ModelFormat.ONNX)

    mixed = _Plan("onnx-int8-static-mixed", ModelFormat.ONNX, Precision.INT8, keep_sensitive)
    plans = [
        _Plan("onnx-fp32", ModelFormat.ONNX, Precision.FP32, lambda out: m.make_fp32(source, out)),
        _Plan("onnx-fp16", ModelFormat.ONNX, Precision.FP16, lambda out: m.make_fp16(fp32, out)),
        _Plan(
            "onnx-int8-static",
            ModelFormat.ONNX,
            Precision.INT8,
            lambda out: m.make_int8_static(fp32, out, calib),
            fallback=mixed,
        ),
        _Plan(
            "onnx-int8-dynamic",
            ModelFormat.ONNX,
            Precision.INT8,
            lambda out: m.make_int8_dynamic(fp32, out),
        ),
    ]
    if openvino_mod.missing_module() is None:
        plans.append(_openvino_plan(fp32, work, job))
    return plans


def _openvino_plan(fp32: Path, work: Path, job: _Job) -> _Plan:
    """NNCF's int8 of the fp32 ONNX graph, judged and timed on OpenVINO; its fallback keeps
    the most harmful layers float, as the other static schemes' do."""
    from lepton_edge.controller.factory import onnx as m

    calib = job.calib
    runtime = openvino_mod.RUNTIME

    def keep_sensitive(out: Path) -> str:
        ranked = m.sensitivity(fp32, calib, job.eval.head(64), work)

        def make(path: Path, keep: list[str]) -> str:
            return openvino_mod.make_int8(fp32, path, calib, keep)

        return _make_mixed(out, ranked, make, job, ModelFormat.ONNX, runtime)

    mixed = _Plan(
        "openvino-int8-mixed", ModelFormat.ONNX, Precision.INT8, keep_sensitive, runtime=runtime
    )
    return _Plan(
        "openvino-int8",
        ModelFormat.ONNX,
        Precision.INT8,
        lambda out: openvino_mod.make_int8(fp32, out, calib),
        fallback=mixed,
        runtime=runtime,
    )


def _tflite_plans(source: Path, work: Path, job: _Job, keras_model: Any = None) -> list[_Plan]:
    """ai-edge-quantizer's variants; with `keras_model`, TensorFlow's converter makes the
    fp16 and int8 dynamic/static ones from the Keras model instead."""
    from lepton_edge.controller.factory import tflite as t

    calib = job.calib
    if keras_model is not None:
        from lepton_edge.controller.factory import keras as k

        def by_tf(kind: str) -> Callable[[Path], str]:
            return lambda o: k.to_tflite_quantized(keras_model, o, kind, calib.arrays[0])

        fp16, dynamic, static = by_tf("fp16"), by_tf("int8-dynamic"), by_tf("int8-static")
    else:
        fp16 = lambda o: t.make_fp16(source, o)  # noqa: E731
        dynamic = lambda o: t.make_int8_dynamic(source, o)  # noqa: E731
        static = lambda o: t.make_int8_static(source, o, calib)  # noqa: E731

    def keep_sensitive(out: Path) -> str:
        qsvs = t.calibrate(source, calib)
        ranked = t.sensitivity(source, qsvs, job.eval.head(64), work)

        def make(path: Path, keep: list[str]) -> str:
            return t.make_int8_static(source, path, calib, keep_float=keep, qsvs=qsvs)

        return _make_mixed(out, ranked, make, job, ModelFormat.TFLITE)

    mixed = _Plan("tflite-int8-static-mixed", ModelFormat.TFLITE, Precision.INT8, keep_sensitive)
    return [
        _Plan("tflite-fp32", ModelFormat.TFLITE, Precision.FP32, lambda o: t.make_fp32(source, o)),
        _Plan("tflite-fp16", ModelFormat.TFLITE, Precision.FP16, fp16),
        _Plan("tflite-int8-static", ModelFormat.TFLITE, Precision.INT8, static, fallback=mixed),
        _Plan("tflite-int8-dynamic", ModelFormat.TFLITE, Precision.INT8, dynamic),
        _Plan(
            "tflite-int8-weight-only",
            ModelFormat.TFLITE,
            Precision.INT8,
            lambda o: t.make_int8_weight_only(source, o),
        ),
    ]


def _run_plan(job: _Job, plan: _Plan) -> None:
    """Make and judge one variant. A scheme that fails is recorded in `not_built` and the
    build goes on; only an fp32 variant (the baseline) failing stops it."""
    name = job.prefix + plan.id
    job.step(f"{name}: quantizing" if plan.precision is not Precision.FP32 else name)
    path = job.work / f"{plan.id}.{plan.format.value}"
    try:
        scheme = plan.make(path)
        if not _lowers_precision(path, plan):
            job.not_built.append(
                NotBuilt(
                    id=name,
                    status="skipped",
                    reason=f"nothing to quantize: the {plan.precision.value} scheme left every "
                    "op of this graph in fp32",
                )
            )
            job.done += 1
            return
        evaluate.Predictor(path, plan.format, job.threads, plan.runtime)
    except UserError:
        raise
    except Exception as exc:
        op = _op_named_in(str(exc))
        what = f"op {op} is not supported by this scheme" if op else "this scheme failed"
        _failed(job, plan, f"{what}: {_first_line(exc)}")
        return
    job.step(f"{name}: evaluating")
    try:
        if plan.precision is Precision.FP32:
            outputs = evaluate.Predictor(path, plan.format, job.threads).run_all(job.eval)
            job.reference[plan.format] = outputs
        metrics, why = job.judge(path, plan.format, runtime=plan.runtime)
    except UserError:
        raise
    except Exception as exc:
        _failed(job, plan, f"running it on the evaluation data failed: {_first_line(exc)}")
        return
    if plan.precision is Precision.FP32:
        why, metrics = None, quality.with_deltas(metrics, metrics)  # deltas of 0, not unknown
        job.baseline[plan.format] = VariantMetrics(
            **{k: v for k, v in metrics.items() if k in VariantMetrics.model_fields}
        )
    job.made.append(_Made(plan, path, scheme, metrics, why))
    job.done += 1
    if why is not None and plan.fallback is not None:
        job.total += 1
        _run_plan(job, plan.fallback)


def _timed_variants(jobs: list[_Job]) -> list[Variant]:
    """Time every made variant of every architecture (all of a format in one interleaved
    run, so the base model and its smaller copies see the same machine; one alone when the
    run fails), measure its memory, and file it under its sha256."""
    head = jobs[0]
    head.step("timing")
    speed: dict[str, dict[str, float]] = {}
    for fmt in ModelFormat:
        of_format = [
            (j.prefix + m.plan.id, m) for j in jobs for m in j.made if m.plan.format is fmt
        ]
        paths = {key: m.path for key, m in of_format}
        runtimes = {key: m.plan.runtime for key, m in of_format if m.plan.runtime}
        if not paths:
            continue
        try:
            speed |= evaluate.measure_speed_isolated(
                paths, fmt, head.eval, head.threads, head.budget, runtimes
            )
        except RuntimeError:
            for variant_id, path in paths.items():
                with contextlib.suppress(RuntimeError):
                    speed |= evaluate.measure_speed_isolated(
                        {variant_id: path}, fmt, head.eval, head.threads, head.budget, runtimes
                    )
    variants = [v for job in jobs for v in _filed(job, speed)]
    head.done += 1
    return variants


def _filed(job: _Job, speed: dict[str, dict[str, float]]) -> list[Variant]:
    """The job's made variants with their timings and memory, copied into the bundle."""
    variants = []
    for made in job.made:
        plan = made.plan
        key = job.prefix + plan.id
        try:
            if key not in speed:
                raise RuntimeError("timing it failed")
            memory = evaluate.measure_memory_isolated(
                made.path, plan.format, job.eval, job.threads, plan.runtime
            )
        except RuntimeError as exc:
            _failed(job, plan, _first_line(exc))
            continue
        measured = {**made.metrics, **speed[key], **memory}
        metrics = VariantMetrics(
            **{k: v for k, v in measured.items() if k in VariantMetrics.model_fields}
        )
        digest = sha256_file(made.path)
        final = job.staging / f"{digest}.{plan.format.value}"
        shutil.copyfile(made.path, final)  # the work copy stays: other variants are made from it
        inputs, outputs = evaluate.tensor_specs(final, plan.format)
        status, reason = "accepted", f"scheme {made.scheme}"
        if made.reason is not None:
            status, reason = "rejected", f"{made.reason}; {reason}"
        variants.append(
            Variant(
                id=job.prefix + plan.id,
                format=plan.format,
                precision=plan.precision,
                scheme=made.scheme.split(" (")[0],
                sha256=digest,
                size_bytes=final.stat().st_size,
                inputs=inputs,
                outputs=outputs,
                metrics=metrics,
                requirements=Requirements(
                    runtime=plan.runtime or RUNTIME_FOR_FORMAT[plan.format],
                    cpu_features=["fp16"] if plan.precision is Precision.FP16 else [],
                    min_memory_mb=math.ceil(memory["process_peak_mb"]),
                ),
                status=status,  # type: ignore[arg-type]
                reason=reason,
                architecture=job.architecture,
                parameters=job.parameters,
                macs=job.macs,
            )
        )
    return variants


def _figures(keras_model: Any, onnx_path: Path | None) -> tuple[int | None, int | None]:
    """(parameters, multiply-accumulates per sample) of the model, from a Keras model or
    else from its ONNX file."""
    if keras_model is not None:
        from lepton_edge.controller.factory import keras as keras_mod

        return keras_mod.figures(keras_model)
    if onnx_path is not None:
        from lepton_edge.controller.factory import onnx as onnx_mod

        return onnx_mod.figures(onnx_mod.load(onnx_path))
    return None, None


def _derived_job(
    base: _Job,
    name: str,
    model: Any,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    skip: set[str],
) -> _Job:
    """Make and judge a smaller model's variants with the base model's schemes; its quantized
    variants are judged against its own fp32. `model` is a Keras model or a pair
    `(onnx_path, tflite_path)` (either may be None) of the same network."""
    job = _Job(**{**base.__dict__, "made": [], "not_built": [], "reference": {}, "baseline": {}})
    job.architecture = name
    job.work.mkdir(parents=True)
    onnx, tflite, keras_model = _architecture_files(name, model, set(base.reference), job.work)
    own_inputs, own_outputs = _model_io(onnx, tflite)
    for what, theirs, ours in (("input", inputs, own_inputs), ("output", outputs, own_outputs)):
        if len(theirs) != len(ours) or not _same_tensors(theirs, ours):
            raise UserError(
                f"architecture {name}: its {what}s {[t.shape for t in ours]} differ from the "
                f"base model's {[t.shape for t in theirs]}: it must take and give the same tensors"
            )
    job.parameters, job.macs = _figures(keras_model, onnx)
    plans: list[_Plan] = []
    if onnx is not None:
        plans += _onnx_plans(onnx, job.work, job)
    if tflite is not None:
        plans += _tflite_plans(tflite, job.work, job)
    plans = [p for p in plans if p.id not in skip]
    job.total += len(plans)
    for plan in plans:
        _run_plan(job, plan)
    return job


def _architecture_files(
    name: str, model: Any, formats: set[ModelFormat], work: Path
) -> tuple[Path | None, Path | None, Any]:
    """(onnx, tflite, keras model or None) of a smaller architecture, in the base's formats."""
    from lepton_edge.controller.factory import keras as keras_mod

    if keras_mod.is_keras_model(model):
        onnx = (
            keras_mod.to_onnx(model, work / "keras.onnx") if ModelFormat.ONNX in formats else None
        )
        tflite = (
            keras_mod.to_tflite(model, work / "keras.tflite")
            if ModelFormat.TFLITE in formats
            else None
        )
        return onnx, tflite, model
    if not (isinstance(model, tuple) and len(model) == 2):
        raise UserError(
            f"architecture {name}: {type(model).__name__} is neither a Keras model nor a pair "
            "(onnx_path, tflite_path)"
        )
    files = {ModelFormat.ONNX: model[0], ModelFormat.TFLITE: model[1]}
    for fmt in formats:
        if files[fmt] is None or not Path(files[fmt]).is_file():
            raise UserError(
                f"architecture {name}: no {fmt.value} file ({files[fmt]}); the base model has "
                f"one, so every architecture needs one"
            )
    onnx = Path(model[0]) if ModelFormat.ONNX in formats else None
    tflite = Path(model[1]) if ModelFormat.TFLITE in formats else None
    return onnx, tflite, None


def _against_base(base: _Job, derived: list[_Job], variant: Variant) -> Variant:
    """A smaller architecture's variant with its deltas against the base model's fp32 (what a
    device gives up by running it), rejected when that architecture's fp32 loses more than
    `architecture_points` there. The base model's variants pass through."""
    job = next((j for j in derived if j.architecture == variant.architecture), None)
    if job is None:
        return variant
    base_fp32 = base.baseline[variant.format].model_dump()
    against = quality.with_deltas(variant.metrics.model_dump(), base_fp32)
    metrics = VariantMetrics(
        **{k: v for k, v in against.items() if k in VariantMetrics.model_fields}
    )
    loss = quality.with_deltas(job.baseline[variant.format].model_dump(), base_fp32)
    delta = loss.get("accuracy_delta", loss.get("metric_delta"))
    allowed = base.tolerance.architecture_points or 0.0
    update: dict[str, Any] = {"metrics": metrics}
    if delta is not None and delta < -allowed - 1e-9 and variant.status == "accepted":
        update |= {
            "status": "rejected",
            "reason": f"architecture {job.architecture} fp32 loses {-delta:.2f} points vs the "
            f"base fp32 > architecture tolerance {allowed:g} pt; {variant.reason}",
        }
    return variant.model_copy(update=update)


def _lowers_precision(path: Path, plan: _Plan) -> bool:
    """Whether the variant holds more of its precision than the fp32 graph it was made from:
    a quantizer that finds nothing it can touch (a tree ensemble, an SVM) hands the fp32 graph
    back, and an fp32 model may already carry int8 tensors (a uint8 input) of its own."""
    if plan.precision is Precision.FP32:
        return True
    from lepton_edge.controller.factory import onnx as onnx_mod
    from lepton_edge.controller.factory import tflite as tflite_mod

    footprint: Callable[[Path, str], int] = (
        onnx_mod.precision_footprint
        if plan.format is ModelFormat.ONNX
        else tflite_mod.precision_footprint
    )
    fp32 = path.with_name(f"{plan.format.value}-fp32{path.suffix}")
    precision = plan.precision.value
    return footprint(path, precision) > footprint(fp32, precision)


def _failed(job: _Job, plan: _Plan, reason: str) -> None:
    if plan.precision is Precision.FP32:
        raise UserError(f"{job.prefix}{plan.id}: {reason}")
    job.not_built.append(NotBuilt(id=job.prefix + plan.id, status="failed", reason=reason))
    job.done += 1


def load_bundle(bundle_dir: Path, public_key: Ed25519PublicKey | None = None) -> Manifest:
    """Read a bundle back with `shared.bundle.verify_bundle` (signature only given a key).
    Raises `SignatureError` on tampering, `UserError` for a folder that is no bundle."""
    if not (Path(bundle_dir) / MANIFEST_FILE).is_file():
        raise UserError(f"{bundle_dir} is not a bundle: no {MANIFEST_FILE}")
    return verify_bundle(bundle_dir, public_key)


def variant_path(bundle_dir: Path, variant: Variant) -> Path:
    return Path(bundle_dir) / variant.filename
