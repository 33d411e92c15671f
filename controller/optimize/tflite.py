"""TFLite variants, made from the fp32 `.tflite` with ai-edge-quantizer (no TensorFlow).

int8 dynamic-range, int8 static (full integer: int8 input and output tensors), int8 weight-only
and fp16 weights (FLOAT_CASTING; FC and conv ops only). Each maker writes one file and returns
how it was made.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import UserError

os.environ.setdefault("TQDM_DISABLE", "1")  # the quantizer's calibration progress bar

#: Ops whose output tensors carry weights; the sensitive-node fallback keeps some in float.
WEIGHTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def check(path: Path) -> None:
    """A one-line error when `path` is not a `.tflite` model LiteRT can load."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_path=str(path))
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError with long texts
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a valid TFLite model ({first})") from None


def make_fp32(source: Path, out: Path) -> str:
    shutil.copyfile(source, out)
    return "as_given"


def _quantize(source: Path, out: Path, recipe: Any, calibration: Any = None) -> None:
    from ai_edge_quantizer import quantizer

    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": calibration
        q = quantizer.Quantizer(str(source), recipe)
        qsvs = q.calibrate(calibration) if q.need_calibration else None
        result = q.quantize(qsvs, enable_progress_report=False)
    out.write_bytes(bytes(result.quantized_model))


def make_int8_dynamic(source: Path, out: Path) -> str:
    from ai_edge_quantizer import recipe

    _quantize(source, out, recipe.dynamic_wi8_afp32())
    return "dynamic_wi8_afp32"


def make_int8_weight_only(source: Path, out: Path) -> str:
    from ai_edge_quantizer import recipe

    _quantize(source, out, recipe.weight_only_wi8_afp32())
    return "weight_only_wi8_afp32"


def make_fp16(source: Path, out: Path) -> str:
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.recipe_manager import RecipeManager

    manager = RecipeManager()
    manager.add_weight_only_config(
        ".*",
        qtyping.TFLOperationName.ALL_SUPPORTED,
        16,
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )
    _quantize(source, out, manager.get_quantization_recipe())
    return "weight_only_fp16"


def _signature(source: Path) -> tuple[str, str, int | None]:
    """(signature key, input name, fixed batch or None) of the model's first signature."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(source))
    signatures = it.get_signature_list()
    if not signatures:
        raise UserError(f"{source} has no signature: export it with a serving signature")
    key, spec = next(iter(signatures.items()))
    detail = it.get_input_details()[0]
    batch = int(detail.get("shape_signature", detail["shape"])[0])
    return key, spec["inputs"][0], None if batch < 0 else batch


def weighted_tensors(source: Path) -> list[str]:
    """Output tensor names of the weighted ops, in execution order (the recipe regex matches
    an op by its output tensor's name)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(source))
    details = {t["index"]: t["name"] for t in it.get_tensor_details()}
    names: list[str] = []
    for op in it._get_ops_details():
        if op["op_name"] in WEIGHTED_OPS:
            names.extend(details[i] for i in op["outputs"] if i in details)
    return names


def make_int8_static(
    source: Path, out: Path, calib_x: np.ndarray, keep_float: list[str] | None = None
) -> str:
    """Full integer: int8 weights (per channel) and activations, int8 input/output tensors,
    MinMax-calibrated on `calib_x`. `keep_float` names op output tensors left in float."""
    import re

    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.recipe_manager import RecipeManager

    manager = RecipeManager()
    manager.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
    for name in keep_float or []:
        manager.add_quantization_config(
            f"(^|;){re.escape(name)};",  # an op's scope: its output names, each + ";"
            qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=AlgorithmName.NO_QUANTIZE,
        )
    key, name, batch = _signature(source)
    x = calib_x.astype(np.float32)
    step = batch or 1  # the calibrator runs the signature at the model's own shape
    calibration = {key: [{name: x[i : i + step]} for i in range(0, len(x) - step + 1, step)]}
    _quantize(source, out, manager.get_quantization_recipe(), calibration)
    return "static_wi8_ai8_mixed" if keep_float else "static_wi8_ai8"
