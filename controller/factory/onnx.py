"""ONNX variants, made with ONNX Runtime's own tools and onnxconverter-common.

fp32 (graph optimized offline by ONNX Runtime), fp16 (float32 I/O kept), int8 static QDQ
per-channel calibrated on the user's data (optionally with sensitive nodes kept float), and
int8 dynamic. Each maker writes one file and returns how it was made.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from lepton_edge.controller.factory.data import Feeds
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import ModelFormat


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


def figures(model: onnx.ModelProto) -> tuple[int, int | None]:
    """(parameters, multiply-accumulates per sample): its convolutions and matrix products
    with constant weights, the work that dominates inference. MACs are None where they cannot
    be counted: a shape that is not fixed (e.g. a dynamic image size), or a product whose
    weights are computed (or an activation) rather than stored."""
    weights = {
        t.name: list(t.dims)
        for t in model.graph.initializer
        if t.data_type in {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    }
    # per use, as Keras counts them: an exporter may share one all-zero bias between layers
    parameters = sum(
        math.prod(weights[name])
        for node in model.graph.node
        for name in node.input
        if name in weights
    )
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in (*inferred.graph.value_info, *inferred.graph.output)
    }
    macs = 0
    for node in model.graph.node:
        if node.op_type not in {"Conv", "Gemm", "MatMul"} or len(node.input) < 2:
            continue
        kernel = weights.get(node.input[1])
        out = shapes.get(node.output[0])
        if kernel is None:  # computed weights, or two activations: unknown beats undercounted
            return parameters, None
        dims = [d for d in (out or [None])[1:] if d]  # a dynamic or unknown size: no figure
        if out is None or len(dims) != len(out) - 1:
            return parameters, None
        if node.op_type == "Conv":  # every output value: (in / groups) * kh * kw products
            macs += math.prod(dims) * math.prod(kernel[1:])
        else:  # one dot product of length K per output value
            macs += math.prod(dims) * (
                kernel[0] if node.op_type == "MatMul" else math.prod(kernel) // dims[-1]
            )
    return parameters, macs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def canonicalize(model: onnx.ModelProto, output_names: Iterable[str] = ()) -> onnx.ModelProto:
    """Rename internal tensors and nodes by topological position so equal graphs give equal
    bytes (tf2onnx's names depend on Python's hash seed). Graph inputs keep their names;
    outputs take `output_names` when given. Initializers are sorted by their new name.
    A graph with control flow (If, Loop, Scan) keeps its names: its subgraphs refer to outer
    tensors by name."""
    graph = model.graph
    subgraphs = any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    )
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

    for index, node in enumerate([] if subgraphs else graph.node):
        node.name = f"{node.op_type}_{index}"
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for tensor in [] if subgraphs else graph.initializer:
        tensor.name = rename(tensor.name)
    for info in [] if subgraphs else [*graph.output, *graph.value_info]:
        info.name = rename(info.name)
    initializers = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    # One opset per domain (some exporters list "" twice; the quantizers then find none).
    opsets: dict[str, int] = {}
    for o in model.opset_import:
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    for info in [*graph.input, *graph.output]:
        for i, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                dim.dim_param = "batch" if i == 0 else f"d{i}"
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path = Path(path)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def input_names(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _calibration_feeds(model: onnx.ModelProto, calib: Feeds) -> list[dict[str, np.ndarray]]:
    """Calibration feeds: batches of 32 when every input has a dynamic batch axis, else one
    sample at a time."""
    names = input_names(model)
    infos = {i.name: i for i in model.graph.input}
    dynamic = all(
        not infos[n].type.tensor_type.shape.dim[0].HasField("dim_value")
        for n in names
        if infos[n].type.tensor_type.shape.dim
    )
    step = 32 if calib.all_batched and dynamic else 1
    return [
        dict(
            zip(
                names,
                calib.feed(i, min(step, len(calib) - i)) if step > 1 else calib.feed(i),
                strict=True,
            )
        )
        for i in range(0, len(calib), step)
    ]


#: The oldest opset the int8 schemes can write: per-channel DequantizeLinear needs `axis` (13).
MIN_OPSET = 13


#: Ops that only an int8 scheme puts in a graph (QDQ, QOperator and dynamic forms).
INT8_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
}


def precision_footprint(path: Path, precision: str) -> int:
    """How much of the graph at `path` is in `precision`: int8 ops for "int8", float16 weights
    (initializers and Constant nodes) for "fp16"; a Cast at the edge computes nothing in fp16.
    The factory compares a variant's count with its fp32 source's (see `build.py`)."""
    model = onnx.load(str(path))
    if precision == "int8":
        return sum(n.op_type in INT8_OPS for n in model.graph.node)
    half = onnx.TensorProto.FLOAT16
    constants = [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.t.dims
    ]
    return sum(t.data_type == half for t in [*model.graph.initializer, *constants])


def make_fp32(source: Path, out: Path) -> str:
    """Shape inference plus ONNX Runtime's basic (portable, standard-op) graph optimizations;
    a model below opset 13 is upgraded (onnx's version converter), so every variant made from
    this one, the QDQ int8 ones included, is a valid graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    model = canonicalize(onnx.load(str(out)), [o.name for o in onnx.load(str(source)).graph.output])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset >= MIN_OPSET:
        save(model, out)
        return "ort_basic_optimized"
    from onnx import version_converter

    save(version_converter.convert_version(model, MIN_OPSET), out)
    return f"ort_basic_optimized (opset {opset} -> {MIN_OPSET})"


def make_fp16(fp32: Path, out: Path) -> str:
    """Weights and compute in float16; float32 inputs/outputs kept so callers do not change."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one "will be truncated" line per tiny weight
        model = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    save(model, out)
    return "fp16_keep_io_float32"


def weighted_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes carrying weights (Conv, MatMul, Gemm), in graph order."""
    inits = {i.name for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in {"Conv", "ConvTranspose", "MatMul", "Gemm"}
        and any(i in inits for i in n.input)
    ]


def layer(model: onnx.ModelProto, node_name: str) -> list[str]:
    """A weighted node plus the unweighted nodes after it (activation, bias, softmax...) up to
    the next weighted node: what "keeping a layer float" must leave alone, or the quantized
    input of the next node would still round away what the float layer computed."""
    weighted = set(weighted_nodes(model))
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {n.name: n for n in model.graph.node}
    found, todo = [node_name], list(by_name[node_name].output)
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.name not in weighted and node.name not in found:
                found.append(node.name)
                todo.extend(node.output)
    return found


def make_int8_static(
    fp32: Path,
    out: Path,
    calib: Feeds,
    keep_float: list[str] | None = None,
    *,
    only: list[str] | None = None,
    calibration_cache: Path | None = None,
) -> str:
    """QDQ, int8 weights per channel and uint8 activations (U8S8), MinMax-calibrated on
    `calib`. U8S8 rather than S8S8: on the x86 (AVX512-VNNI) build host ONNX Runtime ran
    a U8S8 MobileNetV2 faster than fp32 and an S8S8 one slower (one-off check, 1 thread).
    Weights use 7 bits (`reduce_range`): without VNNI (AVX2-only x86, e.g. an AMD EPYC build
    host) U8S8 products saturate, and the tiny test model lost 5.5 points instead of 2.0; one
    bundle must be right on every x86 box of a fleet, not only on the one it was built on.

    `keep_float` names nodes left in float (the sensitive-node fallback); `only` quantizes just
    those nodes (the sensitivity probe); `calibration_cache` reuses one calibration."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load(str(fp32))
    feeds = _calibration_feeds(model, calib)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with _quiet_tmp() as tmp:
        quantize_static(
            str(fp32),
            str(tmp / "q.onnx"),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=only or None,
            nodes_to_exclude=[n for k in keep_float or [] for n in layer(model, k)] or None,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=True,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            calibration_cache_path=calibration_cache,
        )
        save(onnx.load(str(tmp / "q.onnx")), out)
    if keep_float:
        return "static_qdq_per_channel_mixed"
    return "static_qdq_per_channel"


def sensitivity(fp32: Path, calib: Feeds, probe: Feeds, work: Path) -> list[tuple[str, float]]:
    """Each weighted node's harm when it alone is quantized: the mean absolute change of the
    outputs on the unlabelled `probe` samples. Most harmful first. Calibrates once into
    `calibration_cache(work)`, which later `make_int8_static` calls can reuse."""
    from lepton_edge.controller.factory.evaluate import outputs_flat

    reference = outputs_flat(fp32, ModelFormat.ONNX, probe)
    harm: list[tuple[str, float]] = []
    for node in weighted_nodes(load(fp32)):
        candidate = work / "onnx-probe.onnx"
        cache = calibration_cache(work)
        make_int8_static(fp32, candidate, calib, only=[node], calibration_cache=cache)
        got = outputs_flat(candidate, ModelFormat.ONNX, probe)
        harm.append((node, float(np.abs(got - reference).mean())))
    return sorted(harm, key=lambda item: -item[1])


def calibration_cache(work: Path) -> Path:
    return work / "onnx-calibration.json"


def make_int8_dynamic(fp32: Path, out: Path) -> str:
    """int8 weights, activations quantized on the fly by the runtime (no calibration)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_tmp() as tmp:
        # 7-bit weights for the same reason as static int8: no saturation without VNNI.
        quantize_dynamic(
            str(fp32), str(tmp / "q.onnx"), weight_type=QuantType.QInt8, reduce_range=True
        )
        save(onnx.load(str(tmp / "q.onnx")), out)
    return "dynamic"


class _quiet_tmp:
    """A temp dir for ONNX Runtime's tools (they write side files next to their outputs)."""

    def __enter__(self) -> Path:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="lepton-onnx-")
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()
