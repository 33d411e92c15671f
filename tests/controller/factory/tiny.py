"""A tiny classifier made in the test: 8 features -> 16 hidden (relu) -> 4 classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES, HIDDEN, CLASSES = 8, 16, 4


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points in [0, 1]^8 labelled by the tiny model's own weights (so fp32 is ~100 %)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, FEATURES), dtype=np.float32)
    return x, forward(x).argmax(1)


def weights(offset: float = 0.0) -> tuple[np.ndarray, ...]:
    """`offset` adds the same constant to every logit: the same classifier (softmax ignores
    it), but the last layer's output range grows so int8 steps swamp the class differences."""
    rng = np.random.default_rng(42)
    w1 = rng.normal(0, 1, (FEATURES, HIDDEN)).astype(np.float32)
    b1 = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
    w2 = rng.normal(0, 1, (HIDDEN, CLASSES)).astype(np.float32)
    # Centre the logits so that the four classes are about equally frequent.
    sample = rng.random((4096, FEATURES), dtype=np.float32)
    b2 = -(np.maximum(sample @ w1 + b1, 0) @ w2).mean(axis=0).astype(np.float32)
    return w1, b1, w2, b2 + np.float32(offset)


def forward(x: np.ndarray) -> np.ndarray:
    w1, b1, w2, b2 = weights()
    return np.maximum(x @ w1 + b1, 0) @ w2 + b2


def make_onnx(path: Path, extra_op: str | None = None, offset: float = 0.0) -> Path:
    """The tiny model as ONNX; `extra_op` appends an elementwise op before the softmax."""
    w1, b1, w2, b2 = weights(offset)
    names = ["w1", "b1", "w2", "b2"]
    inits = [numpy_helper.from_array(a, n) for a, n in zip((w1, b1, w2, b2), names, strict=True)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="dense1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["z0"], name="dense2"),
        helper.make_node("Add", ["z0", "b2"], ["z1"], name="bias2"),
    ]
    last = "z1"
    if extra_op:
        nodes.append(helper.make_node(extra_op, [last], ["z2"], name="extra"))
        last = "z2"
    nodes.append(helper.make_node("Softmax", [last], ["scores"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


VOCAB, EMBED, SEQ = 50, 16, 6


def token_weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (
        rng.normal(0, 1, (VOCAB, EMBED)).astype(np.float32),
        rng.normal(0, 1, (EMBED, CLASSES)).astype(np.float32),
    )


def token_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of SEQ int64 token ids, labelled by the token model's own weights."""
    ids = np.random.default_rng(seed).integers(0, VOCAB, (n, SEQ), dtype=np.int64)
    embedding, head = token_weights()
    return ids, (embedding[ids].mean(axis=1) @ head).argmax(1)


def make_token_onnx(path: Path) -> Path:
    """A text classifier: int64 token ids -> embedding (Gather) -> mean -> dense -> softmax."""
    embedding, head = token_weights()
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "tokens"], ["e"], name="embed"),
            helper.make_node("ReduceMean", ["e"], ["m"], name="mean", axes=[1], keepdims=0),
            helper.make_node("MatMul", ["m", "head"], ["z"], name="dense"),
            helper.make_node("Softmax", ["z"], ["scores"], name="softmax", axis=-1),
        ],
        "tokens",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", SEQ])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(embedding, "embedding"), numpy_helper.from_array(head, "head")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
