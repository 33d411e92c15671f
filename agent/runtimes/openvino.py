"""OpenVINO backend (the `openvino` package): compiles an ONNX variant (or IR `.xml`) for the
best device OpenVINO finds, or the one the agent is told to use.

fp32 means fp32: on CPUs with bf16 or AMX OpenVINO would run f32 models in bf16 unless told
otherwise, so the precision hint is always set. Inputs are wrapped, not copied, into OpenVINO
tensors. OpenVINO's usage telemetry (which writes under the home directory) is kept out.
"""

from __future__ import annotations

import importlib.metadata
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.agent.runtimes import Runtime, RuntimeOptions, VariantLoadError
from lepton_edge.shared.manifest import TensorSpec

log = logging.getLogger(__name__)

#: Accelerators first; CPU is always there.
DEVICE_PREFERENCE = ("GPU", "NPU", "CPU")


def _openvino() -> Any:
    # `import openvino` imports openvino_telemetry when installed, which creates ~/intel; a
    # service account's home may not even be writable. Without the module it stays off.
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


def version() -> str | None:
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None


def choose_device(available: list[str], requested: str | None = None) -> str:
    """The requested device if OpenVINO has it (`GPU` also matches `GPU.0`), else the first of
    GPU, NPU, CPU that it has."""

    def present(name: str) -> str | None:
        return next((d for d in available if d == name or d.startswith(f"{name}.")), None)

    if requested:
        found = present(requested.upper())
        if found:
            return found
        log.warning(
            "OpenVINO device %s is not available here (%s); using CPU",
            requested,
            ", ".join(available) or "none",
        )
        return "CPU"
    for name in DEVICE_PREFERENCE:
        found = present(name)
        if found:
            return found
    return "CPU"


def _spec(port: Any) -> TensorSpec:
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    names = port.get_names()
    return TensorSpec(
        name=port.get_any_name() if names else f"port{port.get_index()}",
        shape=shape,
        dtype=np.dtype(port.get_element_type().to_dtype()).name,
    )


class OpenVinoRuntime(Runtime):
    name = "openvino"

    def __init__(self, path: Path, variant_id: str, options: RuntimeOptions) -> None:
        ov = _openvino()
        self.path = path
        self.variant_id = variant_id
        core = ov.Core()
        device = choose_device(list(core.available_devices), options.device)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if device == "CPU" and options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        if options.cache_dir is not None:
            options.cache_dir.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(options.cache_dir / "openvino")
        try:
            model = core.read_model(str(path))
            self._compiled = core.compile_model(model, device, config)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VariantLoadError(
                f"variant {variant_id}: OpenVINO could not compile {path.name} for {device}: "
                f"{first[:300]}"
            ) from None
        self._request = self._compiled.create_infer_request()
        self.inputs = [_spec(p) for p in self._compiled.inputs]
        self.outputs = [_spec(p) for p in self._compiled.outputs]
        self.accelerator = device
        in_dtype = self.inputs[0].dtype
        if in_dtype not in ("float32", "float16", "float64"):
            self.close()
            raise VariantLoadError(
                f"variant {variant_id}: input tensor is {in_dtype}; OpenVINO variants must take "
                "float input"
            )
        self._cast = None if in_dtype == "float32" else np.dtype(in_dtype)
        self._tensor = ov.Tensor

    def _infer(self, batch: np.ndarray) -> None:
        if self._cast is not None:
            batch = batch.astype(self._cast)
        # Zero-copy: the tensor shares the array's memory for this run.
        self._request.set_input_tensor(
            self._tensor(np.ascontiguousarray(batch), shared_memory=True)
        )
        self._request.infer()

    def _output(self, index: int) -> np.ndarray:
        # The request reuses its output buffers on the next run: hand out a copy.
        data = self._request.get_output_tensor(index).data
        return np.array(data, dtype=np.float32, copy=True)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._infer(batch)
        return self._output(0)

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        self._infer(batch)
        return [self._output(i) for i in range(len(self.outputs))]

    def close(self) -> None:
        self._request = None
        self._compiled = None


def load(path: Path, variant_id: str, options: RuntimeOptions) -> Runtime:
    return OpenVinoRuntime(path, variant_id, options)
