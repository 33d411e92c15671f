"""ONNX Runtime backend: best installed execution provider, tuned session, optimized-model cache."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.agent.runtimes import Runtime, RuntimeOptions, VariantLoadError
from lepton_edge.shared.manifest import TensorSpec

log = logging.getLogger(__name__)

#: Accelerated providers first; the CPU provider is always the last resort.
PROVIDER_PREFERENCE = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)
_GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def version() -> str | None:
    import onnxruntime

    return str(onnxruntime.__version__)


def choose_providers(
    available: list[str], requested: list[str] | None = None, *, has_gpu: bool = True
) -> list[str]:
    """Providers to ask for, best first: the requested ones that exist, else every accelerated
    one installed (GPU providers only when the hardware profile shows a GPU), then CPU."""
    wanted = requested if requested else list(PROVIDER_PREFERENCE)
    chosen = []
    for provider in wanted:
        if provider not in available:
            if requested:
                log.warning("ONNX provider %s is not installed; skipping it", provider)
            continue
        if provider in _GPU_PROVIDERS and not has_gpu:
            continue
        chosen.append(provider)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _sha256(path: Path) -> str:
    if _HEX64.match(path.stem):  # bundle files are content-addressed already
        return path.stem
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _specs(args: list[Any]) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=a.name,
            shape=[d if isinstance(d, int) else None for d in a.shape],
            dtype=_ONNX_DTYPES.get(a.type, a.type),
        )
        for a in args
    ]


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, path: Path, variant_id: str, options: RuntimeOptions) -> None:
        import onnxruntime as ort

        self.path = path
        self.variant_id = variant_id
        providers = choose_providers(
            ort.get_available_providers(), options.providers, has_gpu=_has_gpu(options)
        )
        level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[options.optimization]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if options.threads:
            so.intra_op_num_threads = options.threads
            so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        source = path
        written: Path | None = None
        cpu_only = providers == ["CPUExecutionProvider"]
        if options.cache_dir is not None and cpu_only:
            # Keyed by content, runtime version and level: a restart loads the optimized graph
            # and skips re-optimising; a new onnxruntime re-optimises once.
            options.cache_dir.mkdir(parents=True, exist_ok=True)
            key = f"{_sha256(path)}.ort{ort.__version__}.{options.optimization}.onnx"
            cached = options.cache_dir / key
            if cached.is_file():
                source = cached
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            else:
                written = options.cache_dir / f".{key}.{os.getpid()}.tmp"
                so.optimized_model_filepath = str(written)
                so.graph_optimization_level = level
        else:
            so.graph_optimization_level = level
        provider_options = [self._provider_options(p, options) for p in providers]
        try:
            self._session = ort.InferenceSession(
                str(source), so, providers=providers, provider_options=provider_options
            )
        except Exception as exc:
            if written is not None:
                written.unlink(missing_ok=True)
            if source != path:  # a corrupt cache entry: drop it and load the original
                log.warning("optimized-model cache %s unreadable (%s); rebuilding", source, exc)
                source.unlink(missing_ok=True)
                self.__init__(path, variant_id, options)  # type: ignore[misc]
                return
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VariantLoadError(
                f"variant {variant_id}: onnxruntime rejected {path.name}: {first[:300]}"
            ) from None
        if written is not None and written.is_file():
            os.replace(written, options.cache_dir / key)  # type: ignore[operator]
        self.cached = source != path
        self.inputs = _specs(self._session.get_inputs())
        self.outputs = _specs(self._session.get_outputs())
        self.accelerator = self._session.get_providers()[0]
        in_dtype = self.inputs[0].dtype
        if in_dtype not in ("float32", "float16", "float64"):
            self.close()
            raise VariantLoadError(
                f"variant {variant_id}: input tensor is {in_dtype}; ONNX variants must take "
                "float input (quantize inside the graph with QDQ)"
            )
        self._input_name = self.inputs[0].name
        self._output_names = [self.outputs[0].name]
        self._all_names = [o.name for o in self.outputs]
        self._cast = None if in_dtype == "float32" else np.dtype(in_dtype)

    @staticmethod
    def _provider_options(provider: str, options: RuntimeOptions) -> dict[str, Any]:
        if provider == "TensorrtExecutionProvider" and options.cache_dir is not None:
            return {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(options.cache_dir),
            }
        return {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._cast is not None:
            batch = batch.astype(self._cast)
        out: np.ndarray = self._session.run(self._output_names, {self._input_name: batch})[0]
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._cast is not None:
            batch = batch.astype(self._cast)
        outs: list[np.ndarray] = self._session.run(self._all_names, {self._input_name: batch})
        return [o if o.dtype == np.float32 else o.astype(np.float32) for o in outs]

    def close(self) -> None:
        self._session = None


def _has_gpu(options: RuntimeOptions) -> bool:
    # Without a profile hint we trust what the installed package offers.
    return options.has_gpu if options.has_gpu is not None else True


def load(path: Path, variant_id: str, options: RuntimeOptions) -> Runtime:
    return OnnxRuntime(path, variant_id, options)
