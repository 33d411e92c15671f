"""Keras models in: converted offline with TensorFlow's own converters (the `keras` extra).

The rest of the factory never imports TensorFlow; only a user who hands in a Keras model pays for
it. Both exports keep the batch dimension dynamic so the factory can measure batch-32 throughput.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path
from typing import Any

from lepton_edge.shared.errors import UserError

#: ONNX opset for exported models: new enough for QDQ per-channel, old enough for every runtime.
ONNX_OPSET = 17


def _require_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ModuleNotFoundError:
        raise UserError(
            "Keras models need TensorFlow: pip install 'lepton-edge[keras]', "
            "or export the model to ONNX/TFLite yourself and pass --onnx/--tflite"
        ) from None
    return tf


def is_keras_model(obj: object) -> bool:
    """True for a Keras model object, without importing TensorFlow when it is not one."""
    return any(
        cls.__module__.startswith(("keras", "tf_keras", "tensorflow"))
        and cls.__name__ in {"Model", "Sequential", "Functional"}
        for cls in type(obj).__mro__
    )


def load_keras(path: Path) -> Any:
    """Load a `.keras` / `.h5` file; a one-line error when it is not a Keras model."""
    _require_tensorflow()
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # keras raises many kinds; all mean "not a model we can read"
        raise UserError(f"{path} is not a Keras model Keras can load ({exc})") from None


def _input_signature(model: Any) -> list[Any]:
    tf = _require_tensorflow()
    shape = list(model.inputs[0].shape)
    shape[0] = None  # dynamic batch
    return [tf.TensorSpec(shape, tf.float32, name="input")]


def to_onnx(model: Any, path: Path, *, opset: int = ONNX_OPSET) -> Path:
    """Export with Keras' ONNX exporter (tf2onnx underneath); dynamic batch dimension."""
    _require_tensorflow()
    path = Path(path)
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(
            str(path),
            format="onnx",
            input_signature=_input_signature(model),
            opset_version=opset,
            verbose=False,
        )
    from lepton_edge.controller.factory import onnx as onnx_variants

    # tf2onnx names tensors in hash-seed order: canonical names make the bytes reproducible.
    model_proto = onnx_variants.canonicalize(onnx_variants.load(path), output_names=["output_0"])
    onnx_variants.save(model_proto, path)
    return path


def to_tflite(model: Any, path: Path, **converter_options: Any) -> Path:
    """Export with TensorFlow's TFLite converter; `converter_options` e.g. `optimizations`,
    `representative_dataset`, `target_spec` pass through to it (used for TF-made int8/fp16)."""
    tf = _require_tensorflow()
    path = Path(path)
    # Builtin ops only: a file needing TensorFlow's flex delegate would not run on LiteRT.
    converter_options.setdefault("target_spec", {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(
            str(path),
            format="litert",
            input_signature=_input_signature(model),
            verbose=False,
            **converter_options,
        )
    return path


def to_tflite_quantized(model: Any, path: Path, kind: str, calib_x: Any = None) -> str:
    """TensorFlow's own post-training quantization (the alternative to ai-edge-quantizer):
    `kind` is "fp16", "int8-dynamic" or "int8-static" (full integer, int8 I/O, calibrated on
    `calib_x`). Returns the scheme name."""
    tf = _require_tensorflow()
    options: dict[str, Any] = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if kind == "fp16":
        options["target_spec"] = {
            "supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS],
            "supported_types": [tf.float16],
        }
    elif kind == "int8-static":

        def representative() -> Any:
            for i in range(len(calib_x)):
                yield [calib_x[i : i + 1]]

        options.update(
            representative_dataset=representative,
            inference_input_type=tf.int8,
            inference_output_type=tf.int8,
            target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        )
    elif kind != "int8-dynamic":
        raise ValueError(f"unknown TensorFlow quantization {kind!r}")
    to_tflite(model, path, **options)
    return f"tf_converter_{kind.replace('-', '_')}"


def figures(model: Any) -> tuple[int, int]:
    """(parameters, multiply-accumulates per sample) of a Keras model: its convolutions and
    dense layers, the work that dominates inference."""
    macs = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in {"Conv2D", "DepthwiseConv2D", "Dense"}:
            continue
        out = [int(d) for d in layer.output.shape[1:]]
        kernel = [int(d) for d in layer.kernel.shape]
        if kind == "Conv2D":  # every output value: kh * kw * (in / groups) products
            macs += math.prod(out) * math.prod(kernel[:3])
        elif kind == "DepthwiseConv2D":
            macs += math.prod(out) * kernel[0] * kernel[1]
        else:  # Dense over the last axis, once per leading position
            macs += math.prod(out[:-1]) * kernel[0] * kernel[1]
    return int(model.count_params()), macs
