"""LiteRT (TensorFlow Lite) backend: `ai_edge_litert`, or `tflite_runtime` on old boxes.

XNNPACK runs by default; extra delegates (e.g. Edge TPU) are tried and dropped, with a log
line, when they fail. Integer-I/O models are quantized/dequantized here for the caller.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.agent.runtimes import Runtime, RuntimeOptions, VariantLoadError
from lepton_edge.shared.manifest import TensorSpec
from lepton_edge.shared.tflite import signature_order

log = logging.getLogger(__name__)


def _module() -> Any:
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        from tflite_runtime import interpreter  # type: ignore[import-not-found,no-redef,unused-ignore]
    return interpreter


def version() -> str | None:
    for dist in ("ai-edge-litert", "tflite-runtime"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature", detail["shape"])
    return TensorSpec(
        name=detail["name"],
        shape=[int(d) if d >= 0 else None for d in signature],
        dtype=np.dtype(detail["dtype"]).name,
    )


class _Quant:
    """How to turn float into the tensor's type and back (identity for float tensors)."""

    def __init__(self, detail: dict[str, Any]) -> None:
        self.dtype = np.dtype(detail["dtype"])
        scale, zero = detail.get("quantization", (0.0, 0))
        self.integer = self.dtype.kind in "iu"
        if self.integer and not scale:
            raise ValueError(f"tensor {detail['name']} is {self.dtype.name} without a scale")
        self.scale = np.float32(scale)
        self.zero = np.float32(zero)
        if self.integer:
            info = np.iinfo(self.dtype)
            self.lo, self.hi = info.min, info.max

    def quantize(self, x: np.ndarray) -> np.ndarray:
        if self.integer:
            q = np.rint(x / self.scale + self.zero)
            return np.clip(q, self.lo, self.hi).astype(self.dtype)
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if self.integer:
            return (q.astype(np.float32) - self.zero) * self.scale
        return q if q.dtype == np.float32 else q.astype(np.float32)


class LiteRtRuntime(Runtime):
    name = "litert"

    def __init__(self, path: Path, variant_id: str, options: RuntimeOptions) -> None:
        self.path = path
        self.variant_id = variant_id
        mod = _module()
        delegates = []
        for library in options.delegates:
            try:
                ctypes.CDLL(library)  # a missing library fails here, cleanly
                delegates.append(mod.load_delegate(library))
            except (ValueError, OSError, RuntimeError) as exc:
                log.warning("delegate %s failed to load (%s); running on CPU/XNNPACK", library, exc)
        try:
            self._interp = self._open(mod, path, options.threads, delegates)
            self.accelerator = f"delegate:{options.delegates[0]}" if delegates else "XNNPACK"
        except (ValueError, RuntimeError) as exc:
            if not delegates:
                raise VariantLoadError(
                    f"variant {variant_id}: LiteRT rejected {path.name}: {_first_line(exc)}"
                ) from None
            log.warning("delegate refused %s (%s); falling back to CPU/XNNPACK", path.name, exc)
            self._interp = self._open_or_raise(mod, path, options.threads, variant_id)
            self.accelerator = "XNNPACK"
        inputs, outputs = signature_order(self._interp)
        inp = inputs[0]
        self.inputs = [_spec(d) for d in inputs]
        self.outputs = [_spec(d) for d in outputs]
        try:
            self._in_q = _Quant(inp)
            self._outs = [(d["index"], _Quant(d)) for d in outputs]
        except ValueError as exc:
            raise VariantLoadError(f"variant {variant_id}: {exc}") from None
        self._in_index = inp["index"]
        self._out_index, self._out_q = self._outs[0]
        self._shape = tuple(int(d) for d in inp["shape"])

    @staticmethod
    def _open(mod: Any, path: Path, threads: int | None, delegates: list[Any]) -> Any:
        with warnings.catch_warnings():  # LiteRT 2.x warns about a debug option we do not set
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
            interp = mod.Interpreter(
                model_path=str(path), num_threads=threads, experimental_delegates=delegates or None
            )
        interp.allocate_tensors()
        return interp

    def _open_or_raise(self, mod: Any, path: Path, threads: int | None, variant_id: str) -> Any:
        try:
            return self._open(mod, path, threads, [])
        except (ValueError, RuntimeError) as exc:
            raise VariantLoadError(
                f"variant {variant_id}: LiteRT rejected {path.name}: {_first_line(exc)}"
            ) from None

    def _invoke(self, batch: np.ndarray) -> None:
        if batch.shape != self._shape:  # resizing re-plans the graph: only on a new batch size
            self._interp.resize_tensor_input(self._in_index, batch.shape)
            self._interp.allocate_tensors()
            self._shape = batch.shape
        self._interp.set_tensor(self._in_index, self._in_q.quantize(batch))
        self._interp.invoke()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._invoke(batch)
        return self._out_q.dequantize(self._interp.get_tensor(self._out_index))

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        self._invoke(batch)
        return [q.dequantize(self._interp.get_tensor(i)) for i, q in self._outs]

    def close(self) -> None:
        self._interp = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def load(path: Path, variant_id: str, options: RuntimeOptions) -> Runtime:
    return LiteRtRuntime(path, variant_id, options)
