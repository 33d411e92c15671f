"""CPU probe: utilisation (total and per core), current frequency and load average (psutil)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from lepton_edge.shared.messages import CpuSample


class CpuProbe:
    source = "psutil"

    def __init__(self, proc_root: Path = Path("/proc")) -> None:
        self.proc_root = proc_root
        # psutil measures utilisation between calls; the first call only sets the baseline.
        psutil.cpu_percent(percpu=True)

    def sample(self) -> CpuSample:
        per_core = [float(min(100.0, max(0.0, p))) for p in psutil.cpu_percent(percpu=True)]
        total = sum(per_core) / len(per_core) if per_core else 0.0
        freq = None
        try:
            f = psutil.cpu_freq()
            if f is not None and f.current > 0:
                freq = float(f.current)
        except (OSError, NotImplementedError, FileNotFoundError):
            freq = None
        try:
            load = os.getloadavg()
            load_avg: tuple[float, float, float] | None = (load[0], load[1], load[2])
        except OSError:
            load_avg = None
        return CpuSample(
            percent=round(total, 2),
            per_core=[round(p, 2) for p in per_core],
            freq_mhz=freq,
            load_avg=load_avg,
        )
