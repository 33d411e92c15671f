"""Inference runtimes: one plugin file per runtime behind one small interface.

`load()` opens a variant file with the runtime its format needs; every runtime is called the
same way (float32 batch in, float32 outputs out) whatever the variant's precision, so the
engine can swap variants of one bundle without knowing how each was quantized.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import RUNTIME_FOR_FORMAT, ModelFormat, TensorSpec, Variant

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class VariantLoadError(UserError):
    """A variant file the runtime rejects (corrupt, unsupported op, missing runtime)."""


@dataclass(frozen=True)
class RuntimeOptions:
    """Knobs a runtime may honour; each ignores what does not apply to it."""

    threads: int | None = None
    #: ONNX Runtime execution providers in preference order; None = best installed.
    providers: list[str] | None = None
    #: "disable" | "basic" | "extended" | "all" (ONNX Runtime graph optimisation).
    optimization: str = "all"
    #: Where optimized models are cached (keyed by the file's sha256); None = no cache.
    cache_dir: Path | None = None
    #: LiteRT delegate libraries to try (e.g. libedgetpu.so.1); CPU/XNNPACK when they fail.
    delegates: list[str] = field(default_factory=list)
    #: From the hardware profile: False keeps CUDA/TensorRT out; None = trust what is installed.
    has_gpu: bool | None = None
    #: OpenVINO device ("CPU", "GPU", "NPU"); None = the best it finds (GPU, NPU, CPU).
    device: str | None = None


class Runtime(ABC):
    """One loaded variant. `run` takes float32 input and returns float32 output."""

    #: registry name: "onnxruntime", "litert" or "openvino"
    name: str = ""
    variant_id: str
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: what actually runs it, e.g. "CPUExecutionProvider" or "XNNPACK"
    accelerator: str = "cpu"

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Infer one batch (N, *input_shape[1:]) float32; return the first output, float32."""

    @abstractmethod
    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Like `run`, but every output, float32, in the source model's order (the order
        of `outputs` and of the manifest's model description, in every format)."""

    @abstractmethod
    def close(self) -> None:
        """Release the session; the runtime must not be used afterwards."""

    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""
        return tuple(int(d) if d is not None else 1 for d in self.inputs[0].shape[1:])

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Backend(Protocol):
    def load(self, path: Path, variant_id: str, options: RuntimeOptions) -> Runtime: ...

    def version(self) -> str | None: ...


#: runtime name -> module implementing it (imported only when used).
BACKENDS: dict[str, str] = {
    "onnxruntime": "lepton_edge.agent.runtimes.onnx",
    "litert": "lepton_edge.agent.runtimes.litert",
    "openvino": "lepton_edge.agent.runtimes.openvino",
}
_SUFFIX = {".onnx": "onnxruntime", ".tflite": "litert", ".xml": "openvino"}
#: runtime name -> the lepton-edge extra that installs it
_EXTRA = {"onnxruntime": "onnx", "litert": "litert", "openvino": "openvino"}

#: runtime name -> distributions that provide it, in preference order.
_DISTRIBUTIONS = {
    "onnxruntime": (
        "onnxruntime",
        "onnxruntime-gpu",
        "onnxruntime-openvino",
        "onnxruntime-directml",
        "onnxruntime-silicon",
    ),
    "litert": ("ai-edge-litert", "tflite-runtime"),
    "openvino": ("openvino",),
}
_MODULES = {
    "onnxruntime": ("onnxruntime",),
    "litert": ("ai_edge_litert", "tflite_runtime"),
    "openvino": ("openvino",),
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a half-installed package or a stub module
        return False


def installed() -> dict[str, str]:
    """Installed runtimes -> version (for the hardware profile); cheap, imports nothing heavy."""
    found: dict[str, str] = {}
    for name, dists in _DISTRIBUTIONS.items():
        if not any(_importable(m) for m in _MODULES[name]):
            continue
        for dist in dists:
            try:
                found[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def onnx_providers() -> list[str]:
    """ONNX Runtime execution providers available on this box ([] without onnxruntime)."""
    if not _importable("onnxruntime"):
        return []
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def runtime_for(path: Path, variant: Variant | None = None) -> str:
    """Which runtime opens this file: from the variant's requirements, else the suffix."""
    if variant is not None:
        return variant.requirements.runtime or RUNTIME_FOR_FORMAT[ModelFormat(variant.format)]
    try:
        return _SUFFIX[Path(path).suffix]
    except KeyError:
        raise VariantLoadError(
            f"{path}: unknown model format {Path(path).suffix!r}; expected .onnx, .tflite or "
            ".xml (OpenVINO IR)"
        ) from None


def backend(name: str) -> _Backend:
    if name not in BACKENDS:
        raise VariantLoadError(f"unknown runtime {name!r}; known: {', '.join(BACKENDS)}")
    module: _Backend = importlib.import_module(BACKENDS[name])
    return module


def load(
    path: Path | str,
    variant: Variant | None = None,
    *,
    threads: int | None = None,
    options: RuntimeOptions | None = None,
    variant_id: str | None = None,
) -> Runtime:
    """Open a variant file; raise `VariantLoadError` (one clear line) if it cannot run here."""
    path = Path(path)
    opts = options or RuntimeOptions()
    if threads is not None:
        opts = replace(opts, threads=threads)
    name = runtime_for(path, variant)
    variant_id = variant_id or (variant.id if variant is not None else path.stem)
    if not path.is_file():
        raise VariantLoadError(f"variant {variant_id}: file {path} does not exist")
    if name not in installed():
        raise VariantLoadError(
            f"variant {variant_id} needs runtime {name}, which is not installed: "
            f"pip install 'lepton-edge[{_EXTRA.get(name, name)}]'"
        )
    return backend(name).load(path, variant_id, opts)
