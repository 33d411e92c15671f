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
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.controller.factory.data import Feeds
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import ModelFormat

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


def precision_footprint(path: Path, precision: str) -> int:
    """How many tensors of the model at `path` are int8/uint8 (for "int8") or float16 (for
    "fp16"); the factory compares a variant's count with its fp32 source's (see `build.py`)."""
    from ai_edge_litert.interpreter import Interpreter

    wanted: set[type[Any]] = {np.float16} if precision == "fp16" else {np.int8, np.uint8}
    details = Interpreter(model_path=str(path)).get_tensor_details()
    return sum(t["dtype"] in wanted for t in details)


def make_fp32(source: Path, out: Path) -> str:
    shutil.copyfile(source, out)
    return "as_given"


def _quantize(
    source: Path, out: Path, recipe: Any, calibration: Any = None, qsvs: Any = None
) -> Any:
    """Quantize `source` by `recipe` into `out`; returns the calibration result (tensor
    ranges) so that a later call can reuse it as `qsvs`."""
    from ai_edge_quantizer import quantizer

    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": calibration
        q = quantizer.Quantizer(str(source), recipe)
        if qsvs is None and q.need_calibration:
            qsvs = q.calibrate(calibration)
        result = q.quantize(qsvs, enable_progress_report=False)
    out.write_bytes(bytes(result.quantized_model))
    return qsvs


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


def _signature(source: Path) -> tuple[str, list[str]]:
    """(signature key, its input names in the model's input order) of the first signature;
    the calibrator feeds inputs by these names."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(source))
    signatures = it.get_signature_list()
    if not signatures:
        raise ValueError(
            "the model has no signature, which static int8 calibration needs: export it "
            "with a serving signature"
        )
    key = next(iter(signatures))
    by_index = {
        d["index"]: name for name, d in it.get_signature_runner(key).get_input_details().items()
    }
    from lepton_edge.shared.tflite import signature_order

    return key, [by_index[d["index"]] for d in signature_order(it)[0]]


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


def _scope(name: str) -> str:
    """Recipe regex matching the op whose outputs include tensor `name` (an op's scope is its
    output names, each followed by ";")."""
    import re

    return f"(^|;){re.escape(name)};"


def _calibration(source: Path, calib: Feeds) -> dict[str, list[dict[str, np.ndarray]]]:
    """One feed per sample, by signature input name (the calibrator runs the model's shape)."""
    key, names = _signature(source)
    return {key: [dict(zip(names, calib.feed(i), strict=True)) for i in range(len(calib))]}


def layer(source: Path, tensor: str) -> list[str]:
    """Output names of the weighted op producing `tensor` and of the unweighted ops after it
    up to the next weighted op (see `lepton_edge.controller.factory.onnx.layer` for why)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(source))
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    start = next(op for op in ops if any(names.get(i) == tensor for i in op["outputs"]))
    found = [names[i] for i in start["outputs"] if i in names]
    todo = list(start["outputs"])
    while todo:
        produced = todo.pop()
        for op in ops:
            if produced in op["inputs"] and op["op_name"] not in WEIGHTED_OPS:
                new = [names[i] for i in op["outputs"] if i in names and names[i] not in found]
                found.extend(new)
                todo.extend(i for i in op["outputs"] if i in names and names[i] in new)
    return found


def make_int8_static(
    source: Path,
    out: Path,
    calib: Feeds,
    keep_float: list[str] | None = None,
    qsvs: Any = None,
) -> str:
    """Full integer: int8 weights (per channel) and activations, int8 input/output tensors,
    MinMax-calibrated on `calib` (or ranges `qsvs` from `calibrate`). `keep_float` names
    op output tensors left in float."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.recipe_manager import RecipeManager

    manager = RecipeManager()
    manager.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
    for name in [n for kept in keep_float or [] for n in layer(source, kept)]:
        manager.add_quantization_config(
            _scope(name),
            qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=AlgorithmName.NO_QUANTIZE,
        )
    calibration = None if qsvs is not None else _calibration(source, calib)
    _quantize(source, out, manager.get_quantization_recipe(), calibration, qsvs)
    return "static_wi8_ai8_mixed" if keep_float else "static_wi8_ai8"


def calibrate(source: Path, calib: Feeds) -> Any:
    """Tensor ranges of a full static-int8 calibration, reusable by `make_int8_static`."""
    from ai_edge_quantizer import recipe

    with tempfile.TemporaryDirectory(prefix="lepton-tflite-") as tmp:
        return _quantize(
            source, Path(tmp) / "q.tflite", recipe.static_wi8_ai8(), _calibration(source, calib)
        )


def sensitivity(source: Path, qsvs: Any, probe: Feeds, work: Path) -> list[tuple[str, float]]:
    """Each weighted op's harm when it alone is quantized (static int8, ranges `qsvs` from
    `calibrate`): the mean absolute change of the outputs on the unlabelled `probe` samples.
    Most harmful first."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.recipe_manager import RecipeManager

    from lepton_edge.controller.factory.evaluate import outputs_flat

    reference = outputs_flat(source, ModelFormat.TFLITE, probe)
    candidate = work / "tflite-probe.tflite"
    harm: list[tuple[str, float]] = []
    for name in weighted_tensors(source):
        manager = RecipeManager()
        manager.add_static_config(_scope(name), qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
        _quantize(source, candidate, manager.get_quantization_recipe(), qsvs=qsvs)
        got = outputs_flat(candidate, ModelFormat.TFLITE, probe)
        harm.append((name, float(np.abs(got - reference).mean())))
    return sorted(harm, key=lambda item: -item[1])
