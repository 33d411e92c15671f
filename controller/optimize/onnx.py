"""ONNX variants, made with ONNX Runtime's own tools and onnxconverter-common.

fp32 (graph optimized offline by ONNX Runtime), fp16 (float32 I/O kept), int8 static QDQ
per-channel calibrated on the user's data (optionally with sensitive nodes kept float), and
int8 dynamic. Each maker writes one file and returns how it was made.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from shared.errors import UserError


def load(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file; a one-line error when it is not one."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, OSError...
        raise UserError(f"{path} is not a valid ONNX model ({_first_line(exc)})") from None
    if not model.graph.node:
        raise UserError(f"{path} is not a valid ONNX model (empty graph)")
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def canonicalize(model: onnx.ModelProto, output_names: Iterable[str] = ()) -> onnx.ModelProto:
    """Rename internal tensors and nodes by topological position so equal graphs give equal
    bytes (tf2onnx's names depend on Python's hash seed). Graph inputs keep their names;
    outputs take `output_names` when given. Initializers are sorted by their new name."""
    graph = model.graph
    keep = {i.name for i in graph.input}
    renames: dict[str, str] = {}
    for new, old in zip(output_names, [o.name for o in graph.output], strict=False):
        renames[old] = new
    counter = 0

    def rename(name: str) -> str:
        nonlocal counter
        if not name or name in keep:
            return name
        if name not in renames:
            renames[name] = f"t{counter}"
            counter += 1
        return renames[name]

    for index, node in enumerate(graph.node):
        node.name = f"{node.op_type}_{index}"
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for info in [*graph.output, *graph.value_info]:
        info.name = rename(info.name)
    initializers = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    for info in [*graph.input, *graph.output]:
        for i, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                dim.dim_param = "batch" if i == 0 else f"d{i}"
    return model



def save(model: onnx.ModelProto, path: Path) -> Path:
    path = Path(path)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path
