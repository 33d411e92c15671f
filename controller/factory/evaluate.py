"""Measuring a variant on the build host: accuracy metrics, latency, throughput, memory.

Every variant is called the same way (float32 in, float32 scores out): a full-integer TFLite
model gets its input quantized and its output dequantized here, as the agent's runtime does.
Speed and memory are measured in a fresh child process per variant, so one variant's arenas and
caches never count against the next (peak RSS only ever grows within a process).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import ModelFormat, TensorSpec, VariantMetrics

#: Batch sizes of the two speed figures in the manifest.
LATENCY_BATCH = 1
THROUGHPUT_BATCH = 32
#: The accuracy pass runs one sample at a time, as a device does: dynamic quantization picks
#: its activation ranges per batch, so a bigger batch would score a different model.
EVAL_BATCH = 1


class Predictor:
    """One loaded variant: `predict(x float32) -> float32 scores`, whatever its I/O types."""

    def __init__(self, path: Path, fmt: ModelFormat, threads: int = 1) -> None:
        self.path = Path(path)
        self.format = ModelFormat(fmt)
        self.threads = threads
        if self.format is ModelFormat.ONNX:
            import onnxruntime as ort

            ort.set_default_logger_severity(3)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
            self._input = self._session.get_inputs()[0].name
        else:
            from ai_edge_litert.interpreter import Interpreter

            self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self._in = self._interpreter.get_input_details()[0]
            self._out = self._interpreter.get_output_details()[0]
            self._batch: int | None = None

    @property
    def fixed_batch(self) -> int | None:
        """The input's batch size when the model fixes it, None when it is dynamic."""
        if self.format is ModelFormat.ONNX:
            dim = self._session.get_inputs()[0].shape[0]
            return dim if isinstance(dim, int) and dim > 0 else None
        signature = self._in.get("shape_signature", self._in["shape"])
        return None if int(signature[0]) < 0 else int(signature[0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.format is ModelFormat.ONNX:
            return np.asarray(self._session.run(None, {self._input: x})[0], dtype=np.float32)
        it = self._interpreter
        if self._batch != len(x):
            it.resize_tensor_input(self._in["index"], [len(x), *self._in["shape"][1:]])
            it.allocate_tensors()
            self._batch = len(x)
        it.set_tensor(self._in["index"], quantize(x, self._in))
        it.invoke()
        return dequantize(it.get_tensor(self._out["index"]), self._out)

    def predict_all(self, x: np.ndarray) -> np.ndarray:
        step = self.fixed_batch or EVAL_BATCH
        if self.fixed_batch and len(x) % step:
            raise ValueError(f"{len(x)} samples do not split into batches of {step}")
        return np.concatenate([self.predict(x[i : i + step]) for i in range(0, len(x), step)])


def quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(x, dtype=np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    quantized: np.ndarray = np.clip(np.round(x / scale + zero_point), info.min, info.max)
    return quantized.astype(dtype)


def dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return np.asarray(y, dtype=np.float32)
    scale, zero_point = detail["quantization"]
    return np.asarray((y.astype(np.float32) - zero_point) * scale, dtype=np.float32)


def tensor_specs(path: Path, fmt: ModelFormat) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs as the model file really has them."""
    if ModelFormat(fmt) is ModelFormat.ONNX:
        import onnx

        model = onnx.load(str(path), load_external_data=False)

        def spec(info: Any) -> TensorSpec:
            kind = info.type.WhichOneof("value")
            if kind != "tensor_type":
                hint = (
                    " (skl2onnx's ZipMap: export with options={id(model): {'zipmap': False}})"
                    if kind == "sequence_type"
                    else ""
                )
                raise UserError(f"{path}: output {info.name!r} is a {kind}, not a tensor{hint}")
            t = info.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
            return TensorSpec(name=info.name, shape=dims, dtype=dtype)

        inits = {i.name for i in model.graph.initializer}
        inputs = [spec(i) for i in model.graph.input if i.name not in inits]
        return inputs, [spec(o) for o in model.graph.output]
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))

    def lite(detail: dict[str, Any]) -> TensorSpec:
        signature = detail.get("shape_signature", detail["shape"])
        dims = [None if int(d) < 0 else int(d) for d in signature]
        return TensorSpec(name=detail["name"], shape=dims, dtype=np.dtype(detail["dtype"]).name)

    return [lite(d) for d in it.get_input_details()], [lite(d) for d in it.get_output_details()]


# -- accuracy metrics ---------------------------------------------------------------------------


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return counts


def accuracy_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 (a class never predicted counts 0 precision) and the
    confusion matrix, from the scores' argmax."""
    predicted = scores.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, num_classes)
    true_positive = np.diag(confusion).astype(np.float64)
    predicted_count = confusion.sum(axis=0)
    actual_count = confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_count > 0, true_positive / predicted_count, 0.0)
        recall = np.where(actual_count > 0, true_positive / actual_count, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = actual_count > 0  # macro average over the classes the evaluation data has
    return {
        "accuracy": float(true_positive.sum() / max(len(labels), 1)),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "confusion": confusion.tolist(),
    }


# -- speed and memory (child process) -----------------------------------------------------------


@dataclass
class SpeedBudget:
    """How long to time each variant: at least `min_runs`, and up to `seconds` per figure."""

    min_runs: int = 30
    max_runs: int = 500
    seconds: float = 0.5
    warmup: int = 5


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB, from /proc (Linux) or getrusage."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def _timed_runs(predictor: Predictor, x: np.ndarray, budget: SpeedBudget) -> np.ndarray:
    for _ in range(budget.warmup):
        predictor.predict(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < budget.max_runs and (
        len(times) < budget.min_runs or time.perf_counter() - start < budget.seconds
    ):
        t0 = time.perf_counter()
        predictor.predict(x)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def measure_speed(
    path: Path, fmt: ModelFormat, sample: np.ndarray, threads: int, budget: SpeedBudget
) -> dict[str, float]:
    """Latency percentiles at batch 1, throughput at batch 32 and peak memory, in this process.

    Memory: the rise of peak RSS from loading and running the variant, over the runtime's own
    baseline (`peak_memory_mb`), and the whole process's peak (`process_peak_mb`)."""
    import onnxruntime  # noqa: F401  (both runtimes imported first: the baseline includes them)

    with contextlib.suppress(ModuleNotFoundError):
        import ai_edge_litert.interpreter  # noqa: F401
    baseline, _ = _rss_mb()
    predictor = Predictor(path, fmt, threads)
    one = sample[:LATENCY_BATCH]
    latencies = _timed_runs(predictor, one, budget) * 1000
    batch = predictor.fixed_batch or THROUGHPUT_BATCH
    x = np.resize(sample, (batch, *sample.shape[1:])).astype(np.float32)
    batch_times = _timed_runs(predictor, x, SpeedBudget(10, 200, budget.seconds, 2))
    _, peak = _rss_mb()
    return {
        "latency_p50_ms": float(np.percentile(latencies, 50)),
        "latency_p95_ms": float(np.percentile(latencies, 95)),
        "latency_p99_ms": float(np.percentile(latencies, 99)),
        "throughput_ips": float(batch / np.median(batch_times)),
        "peak_memory_mb": max(peak - baseline, 0.0),
        "process_peak_mb": peak,
        "runs": float(len(latencies)),
    }


def measure_speed_isolated(
    path: Path, fmt: ModelFormat, sample: np.ndarray, threads: int, budget: SpeedBudget
) -> dict[str, float]:
    """`measure_speed` in a fresh Python process (see the module docstring for why)."""
    with tempfile.TemporaryDirectory(prefix="lepton-measure-") as tmp:
        sample_path = Path(tmp) / "sample.npy"
        np.save(sample_path, np.ascontiguousarray(sample[:THROUGHPUT_BATCH], dtype=np.float32))
        request = {
            "path": str(path.absolute()),
            "format": str(fmt),
            "sample": str(sample_path),
            "threads": threads,
            "budget": budget.__dict__,
        }
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [sys.executable, "-m", "lepton_edge.controller.factory.evaluate", json.dumps(request)],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            timeout=600,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]  # the exception line
            raise RuntimeError(f"measuring {path.name} failed: {last}")
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def variant_metrics(
    accuracy: dict[str, Any], speed: dict[str, float], baseline_accuracy: float | None
) -> VariantMetrics:
    delta = None if baseline_accuracy is None else (accuracy["accuracy"] - baseline_accuracy) * 100
    fields: dict[str, Any] = {**accuracy, "accuracy_delta": delta}
    fields.update({k: v for k, v in speed.items() if k in VariantMetrics.model_fields})
    return VariantMetrics(**fields)


def _child(request_json: str) -> None:
    request = json.loads(request_json)
    sample = np.load(request["sample"])
    result = measure_speed(
        Path(request["path"]),
        ModelFormat(request["format"]),
        sample,
        int(request["threads"]),
        SpeedBudget(**request["budget"]),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    _child(sys.argv[1])
