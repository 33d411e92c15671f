"""lepton-edge: run AI models on fleets of edge devices.

The distribution's one namespace: `lepton_edge.agent` (the device side), `lepton_edge.controller`
(the fleet side, the variant factory and the demo) and `lepton_edge.shared` (their contract).
The folders live at the repository's top level, as the design card fixes; the links beside this
file and `package-dir` in pyproject.toml map them here.

    from lepton_edge import HardwareAdapter
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lepton_edge.shared import __version__

if TYPE_CHECKING:
    from lepton_edge.controller.factory.adapter import HardwareAdapter

__all__ = ["HardwareAdapter", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import lepton_edge.agent` on an edge box never reaches for the ML toolchain.
    if name == "HardwareAdapter":
        from lepton_edge.controller.factory.adapter import HardwareAdapter

        return HardwareAdapter
    raise AttributeError(f"module 'lepton_edge' has no attribute {name!r}")
