"""The model description: the model file's own inputs and outputs, plus what the user says.

The tensors (names, dtypes, shapes with dynamic dimensions) are read from the file; the task,
image pre-processing and detection/segmentation decoding come from the user (`task=`, a
description dict, or a TOML/JSON file). Without a task, one output of (N, >= 2) scores is a
classifier and anything else is `raw`: judged by fidelity to fp32 only, never by a guess.

A description file:

    task = "detection"
    labels = ["square", "disc", "triangle"]
    [input]                      # the image input (or [inputs.NAME] for one of several)
    layout = "NHWC"
    scale = 0.00392156862745098
    [detection]
    boxes = "boxes"
    scores = "scores"
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import ImageInput, ModelDescription, ModelInput, Task, TensorSpec

DescriptionSource = ModelDescription | dict[str, Any] | Path | str


def read_description(source: DescriptionSource | None) -> dict[str, Any]:
    """The user's description as a plain dict (empty when none was given)."""
    if source is None:
        return {}
    if isinstance(source, ModelDescription):
        return source.model_dump(exclude_unset=True)
    if isinstance(source, dict):
        return dict(source)
    path = Path(source)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"model description {path}: {exc.strerror or exc}") from None
    try:
        data: dict[str, Any] = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"model description {path} is not valid TOML/JSON: {exc}") from None
    return data


def _task(value: Any) -> Task:
    try:
        return Task(value)
    except ValueError:
        known = ", ".join(t.value for t in Task)
        raise UserError(f"unknown task {value!r}: use one of {known}") from None


def describe(
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    given: dict[str, Any],
    task: str | None = None,
    image: ImageInput | None = None,
) -> ModelDescription:
    """The model's description from its tensors and the user's fields (`task` and `image`
    override the ones in `given`). Build shapes are filled in once the data is known."""
    given = dict(given)
    given.pop("labels", None)
    given.pop("tolerance", None)
    chosen = _task(task or given.pop("task", None) or _default_task(outputs))
    given.pop("task", None)
    per_input: dict[str, Any] = dict(given.pop("inputs", {}) or {})
    if "input" in given:
        per_input[inputs[0].name] = given.pop("input")
    if image is not None:
        per_input[inputs[0].name] = image.model_dump()
    unknown = sorted(set(per_input) - {i.name for i in inputs})
    if unknown:
        raise UserError(
            f"the description names inputs {unknown} the model does not have: "
            f"{[i.name for i in inputs]}"
        )
    described = []
    for spec in inputs:
        fields = per_input.get(spec.name)
        described.append(
            ModelInput(
                **spec.model_dump(),
                image=image_input(spec, fields) if fields is not None else None,
            )
        )
    if chosen in (Task.CLASSIFICATION, Task.REGRESSION) and "output" not in given:
        if len(outputs) != 1:
            raise UserError(
                f"the model has {len(outputs)} outputs {[o.name for o in outputs]}: name the "
                f'{chosen.value} one (output = "..." in the description)'
            )
        given["output"] = outputs[0].name
    try:
        model = ModelDescription(task=chosen, inputs=described, outputs=outputs, **given)
    except ValidationError as exc:
        raise UserError(f"model description: {_first_error(exc)}") from None
    if chosen is Task.CLASSIFICATION:
        shape = outputs[model.index(model.output or "")].shape
        if len(shape) != 2 or shape[1] is None:
            raise UserError(f"the classification output has shape {shape}, not (N, classes)")
        if shape[1] < 2:  # top-1 of one score is always right: every check would pass
            raise UserError(
                "the model outputs one value per sample (a regression or single-logit head): "
                "say task = regression (or raw), or give a model with 2 or more class scores"
            )
    return model


def _default_task(outputs: list[TensorSpec]) -> Task:
    if len(outputs) == 1:
        shape = outputs[0].shape
        if len(shape) == 2 and shape[1] is not None and shape[1] >= 2:
            return Task.CLASSIFICATION
    return Task.RAW


def image_input(
    spec: TensorSpec, fields: dict[str, Any], fed: list[int] | None = None
) -> ImageInput:
    """An image input's processing; its size comes from the model's shape, or where that is
    dynamic from the `fed` shape (the evaluation data's)."""
    if len(spec.shape) != 4:
        raise UserError(f"input {spec.name!r} has shape {spec.shape}: an image input is 4-D")
    layout = fields.get("layout") or ("NCHW" if spec.shape[1] in (1, 3) else "NHWC")
    fields = {**fields, "layout": layout}
    dims = [d if d is not None else (fed[i] if fed else None) for i, d in enumerate(spec.shape)]
    h, w = (dims[1], dims[2]) if layout == "NHWC" else (dims[2], dims[3])
    if (dims[3] if layout == "NHWC" else dims[1]) == 1:
        fields.setdefault("pixel_format", "gray")
    if "size" not in fields and (h is None or w is None):
        raise UserError(f"input {spec.name!r} has a dynamic size: give size = [height, width]")
    try:
        return ImageInput(**{"size": (h, w), **fields})
    except ValidationError as exc:
        raise UserError(f"input {spec.name!r}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where + ': ' if where else ''}{first['msg']}"


def with_build_shapes(model: ModelDescription, shapes: list[list[int]]) -> ModelDescription:
    """The description with each input's concrete fed shape (from the evaluation data)."""
    inputs = [
        i.model_copy(update={"build_shape": shape})
        for i, shape in zip(model.inputs, shapes, strict=True)
    ]
    return model.model_copy(update={"inputs": inputs})


def image_size(model: ModelDescription) -> tuple[int, int]:
    """(height, width) of the image input: the space detections and masks are in. Never
    guessed from the shape (NCHW or NHWC?): the description says it."""
    for spec in model.inputs:
        if spec.image is not None:
            return spec.image.size
    raise UserError(
        f"a {model.task.value} model needs its image input described: [input] layout = "
        '"NHWC" or "NCHW" in the description (or --input-scale)'
    )
