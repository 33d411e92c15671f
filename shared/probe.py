"""The bundle's probe set: inputs and fp32 outputs that let a device check a variant's answers.

The factory writes it (`controller.factory.build`); the agent's `benchmark` runs every variant
on it with the runtime that will really run it and reports a variant that computes something
else (a runtime bug, a broken kernel on that CPU) as an error, which selection then drops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lepton_edge.shared.manifest import Manifest, ModelFormat, Task, Tolerance


def load_probe(bundle_dir: Path, manifest: Manifest) -> dict[str, np.ndarray] | None:
    """The probe arrays (`input{i}`, `{format}.output{j}`), None when the bundle has none."""
    if manifest.probe is None:
        return None
    path = Path(bundle_dir) / manifest.probe.filename
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as npz:
        return {k: np.asarray(npz[k]) for k in npz.files}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norms) if norms > 0 else float(np.array_equal(x, y))


def wrong_answers(
    manifest: Manifest, fmt: ModelFormat, got: list[np.ndarray], probe: dict[str, np.ndarray]
) -> str | None:
    """Why outputs `got` (per output, stacked over the probe samples) are not fp32's, or None:
    every output's cosine to fp32, and for a classifier its top-1 agreement."""
    tolerance = manifest.tolerance or Tolerance()
    model = manifest.model
    for j, out in enumerate(got):
        reference = probe.get(f"{fmt.value}.output{j}")
        if reference is None:
            continue
        out = out.reshape(reference.shape)
        name = model.outputs[j].name if model else f"output {j}"
        value = cosine(reference, out)
        if value < tolerance.min_cosine:
            return f"{name!r} cosine {value:.4f} to fp32 < {tolerance.min_cosine:g}"
        if model is not None and model.task is Task.CLASSIFICATION and j == 0:
            top1 = reference.reshape(len(out), -1).argmax(1) == out.reshape(len(out), -1).argmax(1)
            # A few samples cannot resolve 97 %: one disagreement is allowed for.
            needed = min(tolerance.min_agreement, 1 - 1.5 / len(out))
            if float(np.mean(top1)) < needed:
                return f"top-1 agreement with fp32 {np.mean(top1):.3f} < {needed:.3f}"
    return None
