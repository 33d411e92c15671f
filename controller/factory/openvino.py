"""The `openvino-int8` scheme: NNCF post-training quantization of the fp32 ONNX graph, for
OpenVINO to run.

NNCF's ONNX backend writes a QDQ `.onnx` (one file, like every other variant) that OpenVINO
compiles into int8 kernels; the variant's runtime is `openvino`, so it is judged and timed on
OpenVINO here and selected only for devices that have it. Layers the search keeps float go in
NNCF's ignored scope. OpenVINO's and NNCF's usage telemetry stays off.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.controller.factory.data import Feeds

RUNTIME = "openvino"
#: NNCF's own default subset size.
CALIBRATION_SAMPLES = 300


def missing_module() -> str | None:
    """The module this scheme lacks here (None: it can run)."""
    for module in ("openvino", "nncf"):
        if importlib.util.find_spec(module) is None:
            return module
    return None


def _quiet() -> None:
    # Both import openvino_telemetry when it is installed, which writes a consent folder under
    # the home directory (and NNCF would send usage events); without the module both stay off.
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


def openvino() -> Any:
    _quiet()
    import openvino

    return openvino


def nncf() -> Any:
    _quiet()
    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


def make_int8(fp32: Path, out: Path, calib: Feeds, keep_float: Sequence[str] = ()) -> str:
    """Quantize `fp32` with NNCF (calibration on `calib`, mixed preset: symmetric weights,
    asymmetric activations) to `out`; the nodes in `keep_float` stay float."""
    import onnx

    from lepton_edge.controller.factory import onnx as onnx_mod

    n = nncf()
    model = onnx.load(str(fp32))
    names = onnx_mod.input_names(model)
    # One sample per item: NNCF's statistics assume batch 1.
    items = [dict(zip(names, calib.feed(i), strict=True)) for i in range(len(calib))]
    kwargs: dict[str, Any] = {
        "subset_size": min(CALIBRATION_SAMPLES, len(items)),
        "preset": n.QuantizationPreset.MIXED,
    }
    if keep_float:
        kwargs["ignored_scope"] = n.IgnoredScope(names=list(keep_float))
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bars (`lepton build --json`)
        quantized = n.quantize(model, n.Dataset(items), **kwargs)
    onnx.save(quantized, str(out))
    return "nncf_ptq_mixed" + (f"_keep{len(keep_float)}" if keep_float else "")


class Predictor:
    """An OpenVINO-compiled variant on the build host's CPU, fp32 meaning fp32."""

    def __init__(self, path: Path, threads: int) -> None:
        ov = openvino()
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._outputs = len(self._compiled.outputs)

    def run(self, feed: list[np.ndarray]) -> list[np.ndarray]:
        self._request.infer(dict(enumerate(feed)))
        return [
            np.array(self._request.get_output_tensor(i).data, dtype=np.float32, copy=True)
            for i in range(self._outputs)
        ]
