"""Memory probe: used and available RAM (psutil), as the OOM killer would see it."""

from __future__ import annotations

import psutil

from lepton_edge.shared.messages import MemorySample

MB = 1024 * 1024


class MemoryProbe:
    source = "psutil"

    def sample(self) -> MemorySample:
        vm = psutil.virtual_memory()
        return MemorySample(
            used_mb=round((vm.total - vm.available) / MB, 1),
            available_mb=round(vm.available / MB, 1),
            percent=float(vm.percent),
        )
