"""The variant factory: one trained model in, a signed bundle of measured variants out.

    from lepton_edge.controller.optimize import build_bundle, HardwareAdapter

`build_bundle(out_dir, *, onnx=None, tflite=None, keras=None, calib_x, eval_x, eval_y, key,
model_name, version=None, tolerance_points=1.0, labels=None, progress=None, skip=(),
threads=1, budget=None, overwrite=False) -> Manifest` builds, measures and signs every variant
into `out_dir` (see `lepton_edge.controller.optimize.factory`). `load_bundle(dir, public_key)` reads one
back, checking the signature and every file's sha256. `HardwareAdapter` is the seed's
`fit` / `evaluate` API on top. Names are imported lazily so `--help` and the measuring child
process stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lepton_edge.controller.optimize.adapter import HardwareAdapter
    from lepton_edge.controller.optimize.factory import (
        ALL_VARIANTS,
        build_bundle,
        load_bundle,
        variant_path,
    )

__all__ = ["ALL_VARIANTS", "HardwareAdapter", "build_bundle", "load_bundle", "variant_path"]


def __getattr__(name: str) -> Any:
    if name == "HardwareAdapter":
        from lepton_edge.controller.optimize.adapter import HardwareAdapter

        return HardwareAdapter
    if name in {"ALL_VARIANTS", "build_bundle", "load_bundle", "variant_path"}:
        from lepton_edge.controller.optimize import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'lepton_edge.controller.optimize' has no attribute {name!r}")
