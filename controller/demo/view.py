"""The live terminal view of the demo (rich): one table of devices under a status header."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from lepton_edge.controller.demo.client import DeviceRow, Snapshot
from lepton_edge.controller.demo.profiles import DeviceProfile

LEVEL_STYLE = {
    "performance": "green",
    "balanced": "cyan",
    "saver": "yellow",
    "critical": "red",
}
PRECISION_STYLE = {"fp32": "blue", "fp16": "yellow", "int8": "magenta"}


@dataclass
class ViewState:
    dashboard_url: str
    broker: str
    phase: str = "starting"
    deadline: float | None = None  # monotonic time the demo ends at
    snapshot: Snapshot | None = None
    profiles: dict[str, DeviceProfile] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Live accuracy over every telemetry sample seen (one interval holds only a few frames).
    _correct: dict[str, float] = field(default_factory=dict)
    _frames: dict[str, int] = field(default_factory=dict)
    _seen: dict[str, int] = field(default_factory=dict)

    def update(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        for device_id, row in snapshot.devices.items():
            if row.seq is None or self._seen.get(device_id) == row.seq:
                continue
            self._seen[device_id] = row.seq
            if row.accuracy is not None and row.frames:
                self._correct[device_id] = (
                    self._correct.get(device_id, 0.0) + row.accuracy * row.frames
                )
                self._frames[device_id] = self._frames.get(device_id, 0) + row.frames

    def accuracy_text(self, device_id: str) -> str:
        frames = self._frames.get(device_id, 0)
        if not frames:
            return "n/a"
        return f"{100 * self._correct[device_id] / frames:.1f}%"


def _num(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def precision_of(variant: str | None) -> str | None:
    if not variant:
        return None
    return next((p for p in ("int8", "fp16", "fp32") if p in variant), None)


def _battery(row: DeviceRow, profile: DeviceProfile | None) -> Text:
    if row.battery_percent is None:
        return Text("mains" if profile is None or profile.battery is None else "–", style="dim")
    pct = row.battery_percent
    style = "red" if pct < 20 else "yellow" if pct < 50 else "green"
    filled = round(pct / 20)
    bar = "█" * filled + "░" * (5 - filled)
    return Text(f"{bar} {pct:3.0f}%{'⚡' if row.charging else ''}", style=style)


def rollout_progress(rollout: dict[str, Any] | None) -> str:
    """`completed: wave 2/2, 4/4 devices healthy` from a rollout of the API."""
    if not rollout:
        return "no rollout yet"
    waves = rollout.get("waves") or []
    devices = rollout.get("devices") or []
    healthy = sum(1 for d in devices if d.get("state") == "healthy")
    wave = min(int(rollout.get("current_wave") or 0) + 1, max(len(waves), 1))
    return (
        f"{rollout.get('state')}: wave {wave}/{len(waves)}, "
        f"{healthy}/{len(devices)} devices healthy"
    )


SHORT_LEVEL = {"performance": "perf", "balanced": "bal", "saver": "saver", "critical": "crit"}


def device_table(state: ViewState, wide: bool) -> Table:
    """One row per device; `wide` (110+ columns) adds the profile and spells levels out."""
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        header_style="bold",
        expand=wide,
    )
    table.add_column("device", no_wrap=True, overflow="ellipsis", max_width=None if wide else 14)
    if wide:
        table.add_column("profile", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("power", no_wrap=True, min_width=11 if wide else 5)
    table.add_column("variant", no_wrap=True, overflow="ellipsis", max_width=None if wide else 22)
    table.add_column("fps", justify="right", no_wrap=True, min_width=4)
    table.add_column("p99 ms", justify="right", no_wrap=True, min_width=6)
    table.add_column("battery", no_wrap=True)
    table.add_column("acc.", justify="right", no_wrap=True, min_width=6)
    rows = state.snapshot.devices if state.snapshot else {}
    for device_id in sorted(set(state.profiles) | set(rows)):
        profile = state.profiles.get(device_id)
        row = rows.get(device_id)
        cells: list[Text | str] = []
        if row is None:
            cells.append(Text(f"… {device_id}", style="dim"))
        else:
            dot = Text("● ", style="green") if row.online else Text("○ ", style="red")
            cells.append(dot + Text(device_id))
        if wide:
            cells.append(profile.description if profile else "")
        if row is None:
            table.add_row(*cells)
            continue
        level = row.power_level or "–"
        precision = precision_of(row.variant)
        cells += [
            Text(
                level if wide else SHORT_LEVEL.get(level, level), style=LEVEL_STYLE.get(level, "")
            ),
            Text(  # narrow: student50-tflite-int8-static -> student50-tflite-int8
                (row.variant if wide else (row.variant or "").removesuffix("-static")) or "–",
                style=PRECISION_STYLE.get(precision or "", ""),
            ),
            _num(row.fps),
            _num(row.p99_ms, 2),
            _battery(row, profile),
            state.accuracy_text(device_id),
        ]
        table.add_row(*cells)
    return table


def _line(text: str, style: str = "") -> Text:
    """One terminal line, cut with … rather than wrapped (the live view must fit 24 rows)."""
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def render(state: ViewState, live: bool = True, width: int = 120) -> RenderableType:
    """The whole view; `live=False` leaves out notes (printed once each instead)."""
    snap = state.snapshot
    online = sum(1 for r in snap.devices.values() if r.online) if snap else 0
    left = ""
    if state.deadline is not None:
        left = f" · {max(0, state.deadline - time.monotonic()):.0f} s left, Ctrl-C ends early"
    parts: list[RenderableType] = [
        # The URL may wrap (a cut URL would be useless); everything else stays on one line.
        Text.assemble(
            ("lepton-edge demo", "bold reverse"),
            " dashboard: ",
            (state.dashboard_url, "bold underline cyan"),
        ),
        _line(
            f"broker {state.broker} · {online}/{len(state.profiles)} devices online · "
            f"{state.phase}{left}",
            "bold",
        ),
        device_table(state, wide=width >= 110),
        _line(f"rollout: {rollout_progress(snap.rollout if snap else None)}"),
    ]
    switches = list(snap.switches) if snap else []
    switches.sort(key=lambda e: float(e.get("ts") or 0))
    if switches:
        parts.append(_line(f"{len(switches)} precision switch(es), latest:", "magenta"))
        for e in switches[-3:]:
            data = e.get("data") or {}
            parts.append(
                _line(
                    f"  {e.get('device_id')}: {data.get('from_variant') or '–'} → "
                    f"{data.get('to_variant')} ({e.get('reason')})",
                    "magenta",
                )
            )
    if live:
        for note in state.notes[-2:]:
            parts.append(_line(note, "yellow"))
    return Group(*parts)
