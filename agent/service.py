"""The agent service: one `Agent` per device owning its link, outbox, store and probes.

`lepton-agent run` builds one from settings and runs it under systemd (Type=notify).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shared.manifest import Manifest
from shared.messages import (
    BatterySample,
    EventKind,
    InferenceStats,
    PowerLevel,
    SetPolicy,
    ThermalSample,
)

#: How a runner tells the controller why something happened (precision switch, errors).
EmitEvent = Callable[[EventKind, str, dict[str, Any]], None]


@runtime_checkable
class Runner(Protocol):
    """The inference side of an agent (issue 5's `agent.runner.InferenceRunner`).

    The agent calls these from its own threads; a runner must be safe to call concurrently
    with its own frame loop. `emit_event` is handed to the runner's constructor.
    """

    def activate(self, bundle_dir: Path, manifest: Manifest, ladder: dict[PowerLevel, str]) -> None:
        """Switch to a verified bundle; raise to refuse it (the agent then rolls back)."""

    def stats(self) -> InferenceStats | None:
        """Figures since the last call (one telemetry interval)."""

    def power_level(self) -> PowerLevel | None: ...

    def active_variant(self) -> str | None: ...

    def update_power(self, battery: BatterySample | None, thermal: ThermalSample | None) -> None:
        """Called before every telemetry sample with the latest power readings."""

    def set_policy(self, command: SetPolicy) -> None: ...

    def benchmark(
        self, bundle_dir: Path, manifest: Manifest, variant_ids: list[str], iterations: int
    ) -> dict[str, Any]:
        """Time variants on this device; returns `{variant_id: VariantTiming}` (models or dicts)."""

    def cpu_seconds(self) -> float:
        """CPU-seconds spent inferring since start (drives the simulated battery)."""

    def close(self) -> None: ...
