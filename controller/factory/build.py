"""The build: one fp32 model in (ONNX, TFLite, both, or Keras), a signed bundle out.

Each variant is made, evaluated on the evaluation data, timed in a fresh process, and kept
under its sha256. A variant that loses more accuracy than the tolerance is recorded as
rejected with the reason, and the next scheme of its precision is tried (static int8 ->
static int8 with the most sensitive layers kept float: layers are ranked by the harm each
does when quantized alone, and the 1, 2, 4, ... worst are kept float until a slice of the
evaluation data is within the tolerance; dynamic int8 is always built as well).
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
from lepton_edge.controller.factory import evaluate
from lepton_edge.shared.bundle import verify_bundle
from lepton_edge.shared.errors import SignatureError, UserError
from lepton_edge.shared.manifest import (
    MANIFEST_FILE,
    RUNTIME_FOR_FORMAT,
    Manifest,
    ModelFormat,
    NotBuilt,
    Precision,
    Requirements,
    Variant,
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


@dataclass
class _Job:
    out_dir: Path
    staging: Path
    calib_x: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray
    num_classes: int
    tolerance_points: float
    threads: int
    budget: evaluate.SpeedBudget
    progress: Progress | None
    total: int
    done: int = 0
    variants: list[Variant] = field(default_factory=list)
    not_built: list[NotBuilt] = field(default_factory=list)
    baseline_accuracy: dict[ModelFormat, float] = field(default_factory=dict)

    def step(self, what: str) -> None:
        if self.progress:
            self.progress(self.done, self.total, what)


def build_bundle(
    out_dir: Path | str,
    *,
    onnx: Path | str | None = None,
    tflite: Path | str | None = None,
    keras: Any = None,
    calib_x: np.ndarray | Path | str,
    eval_x: np.ndarray | Path | str,
    eval_y: np.ndarray | Path | str,
    key: Ed25519PrivateKey | Path | str,
    model_name: str,
    version: str | None = None,
    tolerance_points: float = 1.0,
    labels: list[str] | None = None,
    progress: Progress | None = None,
    skip: Collection[str] = (),
    threads: int = 1,
    budget: evaluate.SpeedBudget | None = None,
    overwrite: bool = False,
    tflite_quantizer: str = "ai-edge-quantizer",
    input_scale: float | None = None,
) -> Manifest:
    """Build, measure and sign every variant of one model into the bundle folder `out_dir`.

    `onnx` / `tflite`: fp32 model files (either or both); `keras`: a Keras model or a `.keras`
    file, converted to both with TensorFlow (the `keras` extra). Data: arrays or IDX / `.npy`
    files; `input_scale` multiplies them (required for integer pixels, e.g. 1/255; recorded in
    the manifest for the agent). `key`: the controller's Ed25519 key or its PEM path (created
    if missing). `skip`: variant ids to leave out. `threads`: runtime threads for the timings.
    `tflite_quantizer="tensorflow"` makes the TFLite fp16/int8 variants of a Keras model with
    TensorFlow's converter instead of ai-edge-quantizer (weight-only int8 and the
    sensitive-layer fallback stay with ai-edge-quantizer). Schemes that fail or change nothing
    go to the manifest's `not_built`. Returns the signed manifest, which is also written to
    `out_dir/manifest.json`."""
    out_dir = Path(out_dir).absolute()  # the measuring child runs elsewhere: no relative paths
    if tolerance_points < 0:
        raise UserError(f"tolerance {tolerance_points} must be >= 0 accuracy points")
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
    signing_key = key if isinstance(key, Ed25519PrivateKey) else _load_key(Path(key))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
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
            tolerance_points=tolerance_points,
            labels=labels,
            progress=progress,
            skip=set(skip),
            threads=threads,
            budget=budget or evaluate.SpeedBudget(),
            tflite_quantizer=tflite_quantizer,
            input_scale=input_scale,
        )
        _publish(staging, out_dir)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def _model_io(onnx_path: Path | None, tflite_path: Path | None) -> tuple[list[int | None], int]:
    """(input shape, number of classes), checked to agree between the two files."""
    shapes: dict[str, tuple[list[int | None], int]] = {}
    for fmt, path in ((ModelFormat.ONNX, onnx_path), (ModelFormat.TFLITE, tflite_path)):
        if path is None:
            continue
        inputs, outputs = evaluate.tensor_specs(path, fmt)
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(
                f"{path} has {len(inputs)} inputs and {len(outputs)} outputs: the factory takes "
                "classifiers with one input and one output of class scores"
            )
        if inputs[0].dtype != "float32":
            raise UserError(f"{path} takes {inputs[0].dtype} input: give the fp32 model")
        out_shape = outputs[0].shape
        if len(out_shape) != 2 or out_shape[1] is None:
            raise UserError(f"{path} outputs shape {out_shape}, not (N, classes) scores")
        if out_shape[1] < 2:  # top-1 of one score is always right: every check would pass
            raise UserError(
                f"{path} outputs one value per sample (a regression or single-logit head); "
                "the factory measures classifiers with 2 or more class scores so far"
            )
        shapes[str(path)] = (inputs[0].shape, int(out_shape[1]))
    (first_path, first), *rest = shapes.items()
    for other_path, other in rest:
        if other[0][1:] != first[0][1:] or other[1] != first[1]:
            raise UserError(
                f"{first_path} and {other_path} are not the same network: inputs {first[0]} vs "
                f"{other[0]}, {first[1]} vs {other[1]} classes"
            )
    return first


def _build(
    out_dir: Path,
    staging: Path,
    *,
    onnx: Path | None,
    tflite: Path | None,
    keras: Any,
    calib_x: np.ndarray | Path | str,
    eval_x: np.ndarray | Path | str,
    eval_y: np.ndarray | Path | str,
    key: Ed25519PrivateKey,
    model_name: str,
    version: str | None,
    tolerance_points: float,
    labels: list[str] | None,
    progress: Progress | None,
    skip: set[str],
    threads: int,
    budget: evaluate.SpeedBudget,
    tflite_quantizer: str,
    input_scale: float | None,
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
    input_shape, num_classes = _model_io(onnx, tflite)
    if labels and len(labels) != num_classes:
        raise UserError(f"{len(labels)} labels given but the model has {num_classes} classes")

    calib = data_mod.prepare_images(
        data_mod.load_array(calib_x, "calibration data"),
        input_shape,
        "calibration data",
        input_scale,
    )[:MAX_CALIBRATION_SAMPLES]
    ex = data_mod.prepare_images(
        data_mod.load_array(eval_x, "evaluation data"), input_shape, "evaluation data", input_scale
    )
    ey = data_mod.prepare_labels(
        data_mod.load_array(eval_y, "evaluation labels"), num_classes, len(ex)
    )

    if keras_model is not None:
        _check_against_keras(keras_model, onnx, tflite, ex[:KERAS_CHECK_SAMPLES], threads)
    probe = _Probe(ex[:PROBE_SAMPLES], ey[:PROBE_SAMPLES], num_classes, tolerance_points)
    plans: list[_Plan] = []
    if onnx is not None:
        plans += _onnx_plans(onnx, work, calib, probe)
    if tflite is not None:
        by_tensorflow = keras_model if tflite_quantizer == "tensorflow" else None
        plans += _tflite_plans(tflite, work, calib, probe, by_tensorflow)
    plans = [p for p in plans if p.id not in skip]
    job = _Job(
        out_dir=out_dir,
        staging=staging,
        calib_x=calib,
        eval_x=ex,
        eval_y=ey,
        num_classes=num_classes,
        tolerance_points=tolerance_points,
        threads=threads,
        budget=budget,
        progress=progress,
        total=len(plans) + 1,
    )
    for plan in plans:
        _run_plan(job, plan)

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
        tolerance_points=tolerance_points,
        baseline={v.format: v.id for v in job.variants if v.precision is Precision.FP32},
        variants=job.variants,
        not_built=job.not_built,
        input_scale=input_scale,
    )
    signed = sign_manifest(manifest, key)
    (staging / MANIFEST_FILE).write_text(signed.model_dump_json(indent=2) + "\n")
    job.done += 1
    job.step("done")
    return signed


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
    try:
        onnx = onnx or keras_mod.to_onnx(model, work / "keras.onnx")
        tflite = tflite or keras_mod.to_tflite(model, work / "keras.tflite")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"TensorFlow could not convert the Keras model: {_first_line(exc)}"
        ) from None
    return model, onnx, tflite


#: Evaluation samples on which the fp32 files must agree with the Keras model they came from.
KERAS_CHECK_SAMPLES = 256
#: Least top-1 agreement with Keras; below it the file computes another function.
KERAS_AGREEMENT = 0.99


def _check_against_keras(
    model: Any, onnx: Path | None, tflite: Path | None, x: np.ndarray, threads: int
) -> None:
    """The source model is the reference: each fp32 file must predict what the Keras model
    predicts on the evaluation inputs (catches a wrong file passed beside it, or a conversion
    that changed the function), else one line and nothing is built."""
    reference = np.asarray(model.predict(x, verbose=0)).argmax(axis=-1)
    for fmt, path in ((ModelFormat.ONNX, onnx), (ModelFormat.TFLITE, tflite)):
        if path is None:
            continue
        scores = evaluate.Predictor(path, fmt, threads).predict_all(x)
        agreement = float(np.mean(scores.argmax(axis=-1) == reference))
        if agreement < KERAS_AGREEMENT:
            raise UserError(
                f"the fp32 {fmt.value} model {path.name} agrees with the Keras model on only "
                f"{agreement:.1%} of {len(x)} evaluation inputs: it is not that model's export "
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


@dataclass
class _Probe:
    """A labelled slice of the evaluation data that steers the sensitive-layer fallback."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    tolerance_points: float


#: Evaluation samples the fallback's search scores each candidate on.
PROBE_SAMPLES = 500


def _make_mixed(
    out: Path,
    ranked: list[tuple[str, float]],
    make: Callable[[Path, list[str]], str],
    probe: _Probe,
    fp32: Path,
    fmt: ModelFormat,
) -> str:
    """Keep the 1, 2, 4, ... most harmful layers float (at most half of them) until the
    probe's accuracy drop is within the tolerance; write that model to `out`."""

    def probe_accuracy(path: Path) -> float:
        scores = evaluate.Predictor(path, fmt).predict_all(probe.x)
        return float(evaluate.accuracy_metrics(scores, probe.y, probe.num_classes)["accuracy"])

    baseline = probe_accuracy(fp32)
    limit = max(1, len(ranked) // 2)
    count, scheme, keep = 1, "", []
    while True:
        keep = [name for name, _ in ranked[:count]]
        scheme = make(out, keep)
        drop = (baseline - probe_accuracy(out)) * 100
        if not _exceeds(drop, probe.tolerance_points) or count >= limit:
            break
        count = min(count * 2, limit)
    names = ", ".join(name if len(name) <= 40 else name[:37] + "..." for name in keep)
    return (
        f"{scheme} (float: {len(keep)} of {len(ranked)} weighted layers, the most harmful "
        f"when quantized alone: {names})"
    )


def _onnx_plans(source: Path, work: Path, calib: np.ndarray, probe: _Probe) -> list[_Plan]:
    from lepton_edge.controller.factory import onnx as m

    fp32 = work / "onnx-fp32.onnx"

    def keep_sensitive(out: Path) -> str:
        ranked = m.sensitivity(fp32, calib, probe.x, work)
        cache = m.calibration_cache(work)

        def make(path: Path, keep: list[str]) -> str:
            return m.make_int8_static(fp32, path, calib, keep_float=keep, calibration_cache=cache)

        return _make_mixed(out, ranked, make, probe, fp32, ModelFormat.ONNX)

    mixed = _Plan("onnx-int8-static-mixed", ModelFormat.ONNX, Precision.INT8, keep_sensitive)
    return [
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


def _tflite_plans(
    source: Path, work: Path, calib: np.ndarray, probe: _Probe, keras_model: Any = None
) -> list[_Plan]:
    """ai-edge-quantizer's variants; with `keras_model`, TensorFlow's converter makes the
    fp16 and int8 dynamic/static ones from the Keras model instead."""
    from lepton_edge.controller.factory import tflite as t

    if keras_model is not None:
        from lepton_edge.controller.factory import keras as k

        def by_tf(kind: str) -> Callable[[Path], str]:
            return lambda o: k.to_tflite_quantized(keras_model, o, kind, calib)

        fp16, dynamic, static = by_tf("fp16"), by_tf("int8-dynamic"), by_tf("int8-static")
    else:
        fp16 = lambda o: t.make_fp16(source, o)  # noqa: E731
        dynamic = lambda o: t.make_int8_dynamic(source, o)  # noqa: E731
        static = lambda o: t.make_int8_static(source, o, calib)  # noqa: E731

    def keep_sensitive(out: Path) -> str:
        qsvs = t.calibrate(source, calib)
        ranked = t.sensitivity(source, qsvs, probe.x, work)

        def make(path: Path, keep: list[str]) -> str:
            return t.make_int8_static(source, path, calib, keep_float=keep, qsvs=qsvs)

        return _make_mixed(out, ranked, make, probe, source, ModelFormat.TFLITE)

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
    """Make, evaluate and time one variant. A scheme that fails is recorded in `not_built`
    and the build goes on; only an fp32 variant (the baseline) failing stops it."""
    job.step(f"{plan.id}: quantizing" if plan.precision is not Precision.FP32 else plan.id)
    ext = plan.format.value
    path = job.staging / "work" / f"{plan.id}.{ext}"
    try:
        scheme = plan.make(path)
        if not _lowers_precision(path, plan):
            job.not_built.append(
                NotBuilt(
                    id=plan.id,
                    status="skipped",
                    reason=f"nothing to quantize: the {plan.precision.value} scheme left every "
                    "op of this graph in fp32",
                )
            )
            job.done += 1
            return
        predictor = evaluate.Predictor(path, plan.format, job.threads)
    except UserError:
        raise
    except Exception as exc:
        op = _op_named_in(str(exc))
        what = f"op {op} is not supported by this scheme" if op else "this scheme failed"
        _failed(job, plan, f"{what}: {_first_line(exc)}")
        return
    job.step(f"{plan.id}: evaluating")
    try:
        scores = predictor.predict_all(job.eval_x)
    except Exception as exc:
        _failed(job, plan, f"running it on the evaluation data failed: {_first_line(exc)}")
        return
    del predictor
    accuracy = evaluate.accuracy_metrics(scores, job.eval_y, job.num_classes)
    if plan.precision is Precision.FP32:
        job.baseline_accuracy[plan.format] = accuracy["accuracy"]
    job.step(f"{plan.id}: timing")
    try:
        speed = evaluate.measure_speed_isolated(
            path, plan.format, job.eval_x, job.threads, job.budget
        )
    except RuntimeError as exc:
        _failed(job, plan, _first_line(exc))
        return
    metrics = evaluate.variant_metrics(accuracy, speed, job.baseline_accuracy.get(plan.format))
    digest = sha256_file(path)
    final = job.staging / f"{digest}.{ext}"
    shutil.copyfile(path, final)  # the work copy stays: other variants are made from it
    inputs, outputs = evaluate.tensor_specs(final, plan.format)
    status, reason = "accepted", f"scheme {scheme}"
    drop = -(metrics.accuracy_delta or 0.0)
    if plan.precision is not Precision.FP32 and _exceeds(drop, job.tolerance_points):
        status = "rejected"
        reason = f"accuracy drop {drop:.2f} pt > tolerance {job.tolerance_points:g} pt; {reason}"
    job.variants.append(
        Variant(
            id=plan.id,
            format=plan.format,
            precision=plan.precision,
            scheme=scheme.split(" (")[0],
            sha256=digest,
            size_bytes=final.stat().st_size,
            inputs=inputs,
            outputs=outputs,
            metrics=metrics,
            requirements=Requirements(
                runtime=RUNTIME_FOR_FORMAT[plan.format],
                cpu_features=["fp16"] if plan.precision is Precision.FP16 else [],
                min_memory_mb=math.ceil(speed["process_peak_mb"]),
            ),
            status=status,  # type: ignore[arg-type]
            reason=reason,
        )
    )
    job.done += 1
    if status == "rejected" and plan.fallback is not None:
        job.total += 1
        _run_plan(job, plan.fallback)


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
        raise UserError(f"{plan.id}: {reason}")
    job.not_built.append(NotBuilt(id=plan.id, status="failed", reason=reason))
    job.done += 1


def load_bundle(bundle_dir: Path, public_key: Ed25519PublicKey | None = None) -> Manifest:
    """Read a bundle back with `shared.bundle.verify_bundle` (signature only given a key).
    Raises `SignatureError` on tampering, `UserError` for a folder that is no bundle."""
    if not (Path(bundle_dir) / MANIFEST_FILE).is_file():
        raise UserError(f"{bundle_dir} is not a bundle: no {MANIFEST_FILE}")
    return verify_bundle(bundle_dir, public_key)


def variant_path(bundle_dir: Path, variant: Variant) -> Path:
    return Path(bundle_dir) / variant.filename


def _exceeds(drop_points: float, tolerance_points: float) -> bool:
    """A drop of exactly the tolerance is within it: (1.0 - 0.98) * 100 is 2.0000000000000018."""
    return round(drop_points, 9) > tolerance_points
