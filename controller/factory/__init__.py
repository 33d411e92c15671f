"""The variant factory: one trained model in, a signed bundle of measured variants out.

    from lepton_edge.controller.factory import build_bundle, HardwareAdapter

`build_bundle(out_dir, *, onnx=None, tflite=None, keras=None, calib_x, eval_x, eval_y, key,
model_name, version=None, tolerance_points=1.0, labels=None, progress=None, skip=(),
threads=1, budget=None, overwrite=False, tflite_quantizer="ai-edge-quantizer",
input_scale=None) -> Manifest` builds, measures and signs every variant
into `out_dir` (see `lepton_edge.controller.factory.build`). `load_bundle(dir, public_key)` reads one
back, checking the signature and every file's sha256. `HardwareAdapter` is the seed's
`fit` / `evaluate` API on top. Names are imported lazily so `--help` and the measuring child
process stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lepton_edge.controller.factory.adapter import HardwareAdapter
    from lepton_edge.controller.factory.build import (
        ALL_VARIANTS,
        build_bundle,
        load_bundle,
        variant_path,
    )

__all__ = [
    "ALL_VARIANTS",
    "REQUIRED_MODULES",
    "HardwareAdapter",
    "build_bundle",
    "load_bundle",
    "missing_modules",
    "variant_path",
]

#: What the `factory` extra installs: without these no variant can be built or measured.
REQUIRED_MODULES = (
    "onnx",
    "onnxruntime",
    "onnxconverter_common",
    "ai_edge_litert",
    "ai_edge_quantizer",
    "pycocotools",
)


def missing_modules() -> list[str]:
    """The modules of `REQUIRED_MODULES` that are not installed here (found without importing)."""
    import importlib.util

    return [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]


def __getattr__(name: str) -> Any:
    if name == "HardwareAdapter":
        from lepton_edge.controller.factory.adapter import HardwareAdapter

        return HardwareAdapter
    if name in {"ALL_VARIANTS", "build_bundle", "load_bundle", "variant_path"}:
        from lepton_edge.controller.factory import build

        return getattr(build, name)
    raise AttributeError(f"module 'lepton_edge.controller.factory' has no attribute {name!r}")
