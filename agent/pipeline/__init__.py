"""How a bundle's model is fed and read: pre-processing into its input, post-processing of
its outputs, both built once per bundle from the manifest's model description and shared
by every variant of its ladder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_edge.agent.pipeline.postprocess import Answer, Postprocessor
from lepton_edge.agent.pipeline.preprocess import BadFrame, Geometry, Preprocessor
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import ImageInput, Manifest, ModelDescription, Task, TensorSpec

__all__ = ["Answer", "BadFrame", "Geometry", "Pipeline"]


@dataclass(frozen=True)
class Pipeline:
    """One bundle's pre- and post-processing. `preprocess` is None for a model that takes
    tensors, not images (audio, text ids, features): frames must then already be tensors."""

    preprocess: Preprocessor | None
    postprocess: Postprocessor
    labels: tuple[str, ...]
    input_shape: tuple[int, ...]
    """one sample's shape, batch dimension left out (dynamic dimensions as 1)"""
    bundle_id: str = ""

    @classmethod
    def for_manifest(
        cls, manifest: Manifest, inputs: list[TensorSpec], outputs: list[TensorSpec], top_k: int = 3
    ) -> Pipeline:
        """From the manifest's description (or, for an older bundle without an image input in
        it, the model's own tensors: an (H, W, C) input fed pixels times `input_scale`, 1/255
        if the bundle has no description at all).
        Raises `UserError` (one line) when the description cannot be applied here."""
        model = manifest.model
        if model is not None and len(model.inputs) > 1:
            raise UserError(
                f"bundle {manifest.bundle_id}: the agent feeds one input; this model takes "
                f"{len(model.inputs)} ({', '.join(i.name for i in model.inputs)}): use the "
                "local endpoint's .npz body or a runner of your own"
            )
        first = inputs[0]
        shape = tuple(int(d) if d is not None else 1 for d in first.shape[1:])
        image = _image_input(model, manifest, shape)
        try:
            post = Postprocessor(
                model,
                [o.name for o in (model.outputs if model else outputs)],
                image_size=image.size if image is not None else None,
                top_k=top_k,
            )
            pre = Preprocessor(image, first.dtype) if image is not None else None
        except (ValueError, BadFrame) as exc:
            raise UserError(f"bundle {manifest.bundle_id}: {exc}") from None
        return cls(pre, post, tuple(manifest.labels), shape, manifest.bundle_id)

    @property
    def task(self) -> Task:
        return self.postprocess.task

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def prepare(self, images: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """A batch of source frames (N, H, W, C) -> the model's input batch."""
        if self.preprocess is None:
            raise BadFrame(
                "this model takes tensors, not images: send its input as a tensor "
                f"{'x'.join(map(str, self.input_shape))}"
            )
        return self.preprocess(images)

    def check_tensor(self, batch: np.ndarray) -> np.ndarray:
        """A tensor frame, float32, if it fits the model; else `BadFrame` naming the shapes."""
        if tuple(batch.shape[1:]) != self.input_shape:
            want = "x".join(map(str, self.input_shape))
            raise BadFrame(
                f"frame of shape {'x'.join(map(str, batch.shape))} does not fit the model: "
                f"it takes N x {want}"
            )
        return batch if batch.dtype == np.float32 else batch.astype(np.float32)


def _image_input(
    model: ModelDescription | None, manifest: Manifest, shape: tuple[int, ...]
) -> ImageInput | None:
    if model is not None and model.inputs[0].image is not None:
        return model.inputs[0].image
    if model is not None and manifest.input_scale is None:
        return None  # described, and not as an image: it takes tensors
    if len(shape) == 3 and shape[-1] in (1, 3):  # (H, W, C): the first turn's classifiers
        return ImageInput(
            layout="NHWC",
            pixel_format="gray" if shape[-1] == 1 else "rgb",
            size=(shape[0], shape[1]),
            scale=manifest.input_scale or 1 / 255,
        )
    return None
