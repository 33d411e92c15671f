"""Structured pruning of a Keras model: fewer filters and units, a narrower model that runs
faster on any runtime.

Each prunable layer (a `Conv2D` or `Dense` that is not the output) keeps the
`1 - fraction` of its filters with the largest L1 norm; the next weighted layer loses the
matching input channels (through pooling, activations, batch norm, dropout and `Flatten`),
and the narrower model is rebuilt with the kept weights, then fine-tuned for a bounded
number of epochs on the training data. Unstructured (magnitude) sparsity is not offered: it
makes files smaller once compressed but no faster on ONNX Runtime or LiteRT on CPU.

A layer the pruner cannot follow (a depthwise or grouped convolution, a residual add, an
unknown layer) is named and left as it is, and so is the layer before it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lepton_edge.shared.errors import UserError

#: Layers that pass channels through unchanged (by their Keras class name).
CHANNEL_TRANSPARENT = {
    "Activation",
    "ReLU",
    "LeakyReLU",
    "Dropout",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "BatchNormalization",
    "Flatten",
}
WEIGHTED = {"Conv2D", "Dense"}
#: Fewer samples than this cannot fine-tune anything.
MIN_TRAINING_SAMPLES = 100


@dataclass
class PruneReport:
    """What was cut: layer -> (kept, original) filters or units; what was left and why."""

    fraction: float
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    parameters: tuple[int, int] = (0, 0)

    def __str__(self) -> str:
        cut = ", ".join(f"{name} {k}/{n}" for name, (k, n) in self.kept.items())
        left = "; ".join(f"{name}: {why}" for name, why in self.skipped.items())
        before, after = self.parameters
        return (
            f"pruned {self.fraction:.0%} by L1 norm: {cut or 'nothing'}"
            f"{f'; not pruned: {left}' if left else ''}; parameters {before} -> {after}"
        )


def _chain(model: Any) -> list[Any]:
    """The model's layers in order, or a clear error when it is not one chain of layers."""
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    for previous, layer in itertools.pairwise(layers):
        if layer.input is not previous.output:
            raise UserError(
                f"layer {layer.name} does not take its input from {previous.name} alone: "
                "pruning handles models that are one chain of layers"
            )
    return layers


def plan(model: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(prunable layer -> the weighted layer that consumes its channels, skipped -> why)."""
    layers = _chain(model)
    weighted = [i for i, layer in enumerate(layers) if type(layer).__name__ in WEIGHTED]
    prunable: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for position, i in enumerate(weighted):
        layer = layers[i]
        if position == len(weighted) - 1:
            skipped[layer.name] = "the output layer keeps its size"
            continue
        j = weighted[position + 1]
        between = [type(x).__name__ for x in layers[i + 1 : j]]
        blocker = next((t for t in between if t not in CHANNEL_TRANSPARENT), None)
        consumer = layers[j]
        if blocker is not None:
            skipped[layer.name] = f"followed by a {blocker} layer, which the pruner cannot follow"
        elif type(consumer).__name__ == "Conv2D" and consumer.get_config().get("groups", 1) != 1:
            skipped[layer.name] = f"feeds the grouped convolution {consumer.name}"
        else:
            prunable[layer.name] = consumer.name
    for layer in layers:
        kind = type(layer).__name__
        if kind not in WEIGHTED and kind not in CHANNEL_TRANSPARENT and layer.weights:
            skipped[layer.name] = f"{kind} layers are not pruned"
    return prunable, skipped


def _l1_keep(kernel: np.ndarray, fraction: float) -> np.ndarray:
    """Indices (ascending) of the output channels with the largest L1 norm."""
    norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
    count = max(1, math.ceil(len(norms) * (1 - fraction) - 1e-9))
    return np.sort(np.argsort(-norms, kind="stable")[:count])


def _rows_after_flatten(layers: list[Any], start: int, end: int, kept: np.ndarray, n: int) -> Any:
    """Input rows of the consumer at `end` that carry the kept channels, following the layers
    between; `Flatten` spreads channel c over every spatial position (channels last)."""
    index: Any = kept
    for layer in layers[start + 1 : end]:
        if type(layer).__name__ == "Flatten":
            height_width = int(np.prod(layer.input.shape[1:-1]))
            index = (np.arange(height_width)[:, None] * n + kept[None, :]).ravel()
    return index


def prune_model(model: Any, fraction: float) -> tuple[Any, PruneReport]:
    """The narrower model with the kept weights (not fine-tuned), and what was cut."""
    if not 0 < fraction < 1:
        raise UserError(f"pruning fraction {fraction} is outside (0, 1): e.g. 0.5 removes half")
    import keras

    layers = _chain(model)
    prunable, skipped = plan(model)
    report = PruneReport(fraction=fraction, skipped=skipped)
    by_name = {layer.name: i for i, layer in enumerate(layers)}
    weights = {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in layers}
    configs = {layer.name: layer.get_config() for layer in layers}
    kept_in: dict[str, Any] = {}  # consumer -> input rows/channels it keeps
    for name, consumer in prunable.items():
        kernel, *rest = weights[name]
        n = kernel.shape[-1]
        keep = _l1_keep(kernel, fraction)
        report.kept[name] = (len(keep), n)
        weights[name] = [kernel[..., keep], *(w[keep] for w in rest)]
        size_key = "filters" if "filters" in configs[name] else "units"
        configs[name] = {**configs[name], size_key: len(keep)}
        start, end = by_name[name], by_name[consumer]
        for layer in layers[start + 1 : end]:
            if type(layer).__name__ == "BatchNormalization":
                weights[layer.name] = [w[keep] for w in weights[layer.name]]
        kept_in[consumer] = _rows_after_flatten(layers, start, end, keep, n)
    for consumer, rows in kept_in.items():
        kernel, *rest = weights[consumer]
        axis = kernel.ndim - 2  # Dense (in, out): 0; Conv2D (h, w, in, out): 2
        weights[consumer] = [np.take(kernel, rows, axis=axis), *rest]
    rebuilt = [keras.Input(model.inputs[0].shape[1:], name=model.inputs[0].name)]
    rebuilt += [type(layer).from_config(configs[layer.name]) for layer in layers]
    narrow = keras.Sequential(rebuilt, name=f"{model.name}_pruned{round(fraction * 100)}")
    for layer in layers:
        narrow.get_layer(layer.name).set_weights(weights[layer.name])
    report.parameters = (model.count_params(), narrow.count_params())
    return narrow, report


def check_labels(model: Any, y: np.ndarray) -> None:
    """Fine-tuning and distillation train a classifier on class indices: anything else (a
    regression, a detector, one-hot or float targets) would train it towards nonsense."""
    classes = int(model.outputs[0].shape[-1])
    y = np.asarray(y)
    if (
        len(model.outputs) != 1
        or len(model.outputs[0].shape) != 2
        or y.ndim != 1
        or y.dtype.kind not in "iu"
        or (len(y) and (y.min() < 0 or y.max() >= classes))
    ):
        raise UserError(
            "pruning and distillation fine-tune classifiers only: one (N, classes) output and "
            f"integer class labels in [0, {classes}); this model or these labels are not that"
        )


def check_budget(samples: int, epochs: int) -> None:
    if epochs < 1:
        raise UserError(f"a training budget of {epochs} epochs trains nothing: use 1 or more")
    if samples < MIN_TRAINING_SAMPLES:
        raise UserError(
            f"{samples} training samples are too few to fine-tune on: give at least "
            f"{MIN_TRAINING_SAMPLES}"
        )


def fine_tune(
    model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int = 64, seed: int = 0
) -> Any:
    """Train a classifier for `epochs` on (x, y) with hard labels; returns the model."""
    check_budget(len(x), epochs)
    check_labels(model, y)
    import keras

    keras.utils.set_random_seed(seed)
    probabilities = model.layers[-1].get_config().get("activation") == "softmax"
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities),
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return model


def prune(
    model: Any, x: np.ndarray, y: np.ndarray, *, fraction: float = 0.5, epochs: int = 2
) -> tuple[Any, PruneReport]:
    """Prune `fraction` of each prunable layer by L1 norm, then fine-tune for `epochs`."""
    if len(x) != len(y):
        raise UserError(f"{len(x)} training samples but {len(y)} labels")
    check_budget(len(x), epochs)
    narrow, report = prune_model(model, fraction)
    if not report.kept:
        reasons = "; ".join(f"{k}: {v}" for k, v in report.skipped.items())
        raise UserError(f"nothing in {model.name} can be pruned ({reasons})")
    return fine_tune(narrow, x, y, epochs=epochs), report
