"""Running a variant on the build host: its outputs, latency, throughput and memory.

Every variant is called the same way (float32 in, float32 out): a full-integer TFLite model
gets its inputs quantized and its outputs dequantized here, as the agent's runtime does.
Speed is measured in interleaved rounds, all variants of a format in one fresh process (one
short run per variant was off by up to 2.8x); memory in a fresh process per variant, so one
variant's arenas never count against the next.
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

from lepton_edge.controller.factory import openvino as openvino_mod
from lepton_edge.controller.factory.data import Feeds
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import ModelFormat, TensorSpec
from lepton_edge.shared.tflite import signature_order

#: Batch sizes of the two speed figures in the manifest.
THROUGHPUT_BATCH = 32
#: The accuracy pass runs one sample at a time, as a device does: dynamic quantization picks
#: its activation ranges per batch, so a bigger batch would score a different model.
EVAL_BATCH = 1


class Predictor:
    """One loaded variant: `run(feed) -> outputs`, float32 in and out whatever its I/O types
    (integer inputs such as token ids pass through as the model's dtype)."""

    def __init__(
        self, path: Path, fmt: ModelFormat, threads: int = 1, runtime: str | None = None
    ) -> None:
        self.path = Path(path)
        self.format = ModelFormat(fmt)
        self.threads = threads
        self._openvino = None
        if runtime == openvino_mod.RUNTIME:
            self._openvino = openvino_mod.Predictor(self.path, threads)
        elif self.format is ModelFormat.ONNX:
            import onnxruntime as ort

            ort.set_default_logger_severity(3)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
            self._inputs = [i.name for i in self._session.get_inputs()]
        else:
            from ai_edge_litert.interpreter import Interpreter

            self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self._in, self._out = signature_order(self._interpreter)
            self._shapes: list[tuple[int, ...]] = [tuple(d["shape"]) for d in self._in]
            self._allocated = False

    def run(self, feed: list[np.ndarray]) -> list[np.ndarray]:
        """The outputs (float32) for one feed: an array per input, in the model's order."""
        if self._openvino is not None:
            return self._openvino.run(feed)
        if self.format is ModelFormat.ONNX:
            outputs = self._session.run(None, dict(zip(self._inputs, feed, strict=True)))
            return [np.asarray(o, dtype=np.float32) for o in outputs]
        it = self._interpreter
        shapes = [tuple(x.shape) for x in feed]
        if shapes != self._shapes or not self._allocated:
            for detail, old, new in zip(self._in, self._shapes, shapes, strict=True):
                if old != new:
                    it.resize_tensor_input(detail["index"], list(new))
            it.allocate_tensors()
            self._shapes, self._allocated = shapes, True
        for detail, x in zip(self._in, feed, strict=True):
            it.set_tensor(detail["index"], quantize(x, detail))
        it.invoke()
        return [dequantize(it.get_tensor(d["index"]), d) for d in self._out]

    def run_all(self, feeds: Feeds) -> list[list[np.ndarray]]:
        """Outputs per sample, one sample at a time (as a device runs it)."""
        return [self.run(feeds.feed(i)) for i in range(len(feeds))]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """A one-input model's first output for the batch `x`."""
        return self.run([np.ascontiguousarray(x)])[0]

    def predict_all(self, x: np.ndarray) -> np.ndarray:
        """`predict` sample by sample over `x`, concatenated."""
        return np.concatenate([self.predict(x[i : i + EVAL_BATCH]) for i in range(len(x))])


def outputs_flat(path: Path, fmt: ModelFormat, probe: Feeds) -> np.ndarray:
    """Every output of the model at `path` on `probe`, flattened into one vector."""
    runs = Predictor(path, fmt).run_all(probe)
    return np.concatenate([o.ravel() for outputs in runs for o in outputs])


def quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.kind == "f" or x.dtype.kind in "iub" or not scale:  # float, or ids as they are
        return np.ascontiguousarray(x, dtype=dtype)
    info = np.iinfo(dtype)
    quantized: np.ndarray = np.clip(np.round(x / scale + zero_point), info.min, info.max)
    return quantized.astype(dtype)


def dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return np.asarray(y, dtype=np.float32)
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
            dims = [d.dim_value if d.dim_value > 0 else None for d in t.shape.dim]
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
            return TensorSpec(name=info.name, shape=dims, dtype=dtype)

        inits = {i.name for i in model.graph.initializer}
        inputs = [spec(i) for i in model.graph.input if i.name not in inits]
        return inputs, [spec(o) for o in model.graph.output]
    from ai_edge_litert.interpreter import Interpreter

    lite_inputs, lite_outputs = signature_order(Interpreter(model_path=str(path)))

    def lite(detail: dict[str, Any]) -> TensorSpec:
        signature = detail.get("shape_signature", detail["shape"])
        dims = [None if int(d) < 0 else int(d) for d in signature]
        return TensorSpec(name=detail["name"], shape=dims, dtype=np.dtype(detail["dtype"]).name)

    return [lite(d) for d in lite_inputs], [lite(d) for d in lite_outputs]


# -- speed and memory (child processes) --------------------------------------------------------


@dataclass
class SpeedBudget:
    """How long to time each variant: `rounds` interleaved rounds (every variant once per
    round, so a noisy moment hits all of them), at least `min_runs` runs per variant in all,
    and up to `seconds` per variant and figure."""

    min_runs: int = 30
    max_runs: int = 500
    seconds: float = 0.5
    warmup: int = 5
    rounds: int = 5


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


def _round(predictor: Predictor, feed: list[np.ndarray], runs: int, seconds: float) -> list[float]:
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or (time.perf_counter() - start < seconds and len(times) < 10 * runs):
        t0 = time.perf_counter()
        predictor.run(feed)
        times.append(time.perf_counter() - t0)
    return times


def _interleaved(
    predictors: dict[str, Predictor], feed: list[np.ndarray], budget: SpeedBudget, warmup: int
) -> dict[str, tuple[np.ndarray, list[float]]]:
    """Per variant: all run times and the median of each round; the order rotates per round."""
    for predictor in predictors.values():
        for _ in range(warmup):
            predictor.run(feed)
    rounds = max(budget.rounds, 1)
    runs = max(budget.min_runs // rounds, 1)
    seconds = budget.seconds / rounds
    times: dict[str, list[float]] = {k: [] for k in predictors}
    medians: dict[str, list[float]] = {k: [] for k in predictors}
    ids = list(predictors)
    for r in range(rounds):
        for k in ids[r % len(ids) :] + ids[: r % len(ids)]:
            t = _round(predictors[k], feed, runs, seconds)[: max(budget.max_runs // rounds, 1)]
            times[k] += t
            medians[k].append(float(np.median(t)))
    return {k: (np.asarray(times[k]), medians[k]) for k in ids}


def measure_speed(
    paths: dict[str, Path],
    fmt: ModelFormat,
    feeds: Feeds,
    threads: int,
    budget: SpeedBudget,
    runtimes: dict[str, str] | None = None,
) -> dict[str, dict[str, float]]:
    """Latency percentiles (batch 1) and the spread of the round medians, and throughput (at
    batch 32 when every input has a batch axis, else one sample at a time), for all `paths`
    of one format in interleaved rounds in this process."""
    runtimes = runtimes or {}
    predictors = {k: Predictor(p, fmt, threads, runtimes.get(k)) for k, p in paths.items()}
    one = feeds.feed(0)
    latency = _interleaved(predictors, one, budget, budget.warmup)
    batch_feed = feeds.batch_of(THROUGHPUT_BATCH)
    batched = None
    if batch_feed is not None:
        with contextlib.suppress(Exception):  # a fixed-batch model: throughput at batch 1
            for predictor in predictors.values():
                predictor.run(batch_feed)
            small = SpeedBudget(10, 200, budget.seconds, 2, budget.rounds)
            batched = _interleaved(predictors, batch_feed, small, 2)
    result = {}
    for k, (times, medians) in latency.items():
        ms = times * 1000
        if batched is not None:
            throughput = THROUGHPUT_BATCH / float(np.median(batched[k][0]))
        else:
            throughput = 1.0 / float(np.median(times))
        result[k] = {
            "latency_p50_ms": float(np.percentile(ms, 50)),
            "latency_p95_ms": float(np.percentile(ms, 95)),
            "latency_p99_ms": float(np.percentile(ms, 99)),
            "latency_spread": float(max(medians) / min(medians)) if min(medians) > 0 else 1.0,
            "throughput_ips": throughput,
            "runs": float(len(times)),
        }
    return result


def measure_memory(
    path: Path, fmt: ModelFormat, feeds: Feeds, threads: int, runtime: str | None = None
) -> dict[str, float]:
    """The rise of peak RSS from loading and running the variant over the runtimes' own
    baseline (`peak_memory_mb`), and the whole process's peak (`process_peak_mb`)."""
    import onnxruntime  # noqa: F401  (both runtimes imported first: the baseline includes them)

    with contextlib.suppress(ModuleNotFoundError):
        import ai_edge_litert.interpreter  # noqa: F401
    if runtime == openvino_mod.RUNTIME:
        openvino_mod.openvino()  # its libraries count in the baseline too
    baseline, _ = _rss_mb()
    predictor = Predictor(path, fmt, threads, runtime)
    for _ in range(3):
        predictor.run(feeds.feed(0))
    batch_feed = feeds.batch_of(THROUGHPUT_BATCH)
    if batch_feed is not None:
        with contextlib.suppress(Exception):
            predictor.run(batch_feed)
    _, peak = _rss_mb()
    return {"peak_memory_mb": max(peak - baseline, 0.0), "process_peak_mb": peak}


def _in_child(request: dict[str, Any], feeds: Feeds) -> Any:
    """Run `request` in a fresh Python process: speed in one process per format, so each
    figure is measured warm beside its rivals; memory in one per variant, because peak RSS
    only ever grows within a process."""
    with tempfile.TemporaryDirectory(prefix="lepton-measure-") as tmp:
        sample = Path(tmp) / "sample.npz"
        head = feeds.head(THROUGHPUT_BATCH)
        arrays = {f"input{i}": a for i, a in enumerate(head.arrays)}
        np.savez(sample, **arrays)  # type: ignore[arg-type]
        request = {**request, "sample": str(sample), "batched": list(feeds.batched)}
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(request["threads"]),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        done = subprocess.run(
            [sys.executable, "-m", "lepton_edge.controller.factory.evaluate", json.dumps(request)],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            timeout=900,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]  # the exception line
            raise RuntimeError(f"measuring failed: {last}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def measure_speed_isolated(
    paths: dict[str, Path],
    fmt: ModelFormat,
    feeds: Feeds,
    threads: int,
    budget: SpeedBudget,
    runtimes: dict[str, str] | None = None,
) -> dict[str, dict[str, float]]:
    """`measure_speed` in a fresh Python process."""
    request = {
        "kind": "speed",
        "paths": {k: str(p.absolute()) for k, p in paths.items()},
        "format": str(fmt),
        "threads": threads,
        "budget": budget.__dict__,
        "runtimes": runtimes or {},
    }
    result: dict[str, dict[str, float]] = _in_child(request, feeds)
    return result


def measure_memory_isolated(
    path: Path, fmt: ModelFormat, feeds: Feeds, threads: int, runtime: str | None = None
) -> dict[str, float]:
    """`measure_memory` in a fresh Python process."""
    request = {
        "kind": "memory",
        "path": str(path.absolute()),
        "format": str(fmt),
        "threads": threads,
        "runtime": runtime,
    }
    result: dict[str, float] = _in_child(request, feeds)
    return result


def _child(request_json: str) -> None:
    request = json.loads(request_json)
    with np.load(request["sample"]) as npz:
        arrays = tuple(npz[f"input{i}"] for i in range(len(npz.files)))
    feeds = Feeds(arrays, tuple(request["batched"]))
    fmt, threads = ModelFormat(request["format"]), int(request["threads"])
    if request["kind"] == "memory":
        result: Any = measure_memory(
            Path(request["path"]), fmt, feeds, threads, request.get("runtime")
        )
    else:
        paths = {k: Path(v) for k, v in request["paths"].items()}
        budget = SpeedBudget(**request["budget"])
        result = measure_speed(paths, fmt, feeds, threads, budget, request.get("runtimes"))
    print(json.dumps(result))


if __name__ == "__main__":
    _child(sys.argv[1])
