"""The live terminal view of the demo (rich): one table of devices under a status header."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from controller.demo.client import DeviceRow, Snapshot
from controller.demo.profiles import DeviceProfile
from controller.demo.summary import is_variant_switch

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
    bar = "█" * round(pct / 10) + "░" * (10 - round(pct / 10))
    return Text(f"{bar} {pct:4.0f} %{' ⚡' if row.charging else ''}", style=style)


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


def device_table(snapshot: Snapshot | None, profiles: dict[str, DeviceProfile]) -> Table:
    table = Table(expand=True, pad_edge=False, header_style="bold")
    for name, justify in (
        ("device", "left"),
        ("profile", "left"),
        ("online", "center"),
        ("power", "left"),
        ("variant", "left"),
        ("fps", "right"),
        ("p99 ms", "right"),
        ("battery", "left"),
        ("accuracy", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    rows = snapshot.devices if snapshot else {}
    for device_id in sorted(set(profiles) | set(rows)):
        profile = profiles.get(device_id)
        row = rows.get(device_id)
        desc = f"{profile.arch} {profile.power_source}" if profile else ""
        if row is None:
            table.add_row(device_id, desc, Text("…", style="dim"), "", "", "", "", "", "")
            continue
        precision = precision_of(row.variant)
        table.add_row(
            device_id,
            desc,
            Text("●", style="green") if row.online else Text("○", style="red"),
            Text(row.power_level or "–", style=LEVEL_STYLE.get(row.power_level or "", "")),
            Text(row.variant or "–", style=PRECISION_STYLE.get(precision or "", "")),
            _num(row.fps),
            _num(row.p99_ms, 2),
            _battery(row, profile),
            "n/a" if row.accuracy is None else f"{100 * row.accuracy:.1f} %",
        )
    return table


def render(state: ViewState, live: bool = True) -> RenderableType:
    """The whole view; `live=False` leaves out notes (printed once each instead)."""
    snap = state.snapshot
    online = sum(1 for r in snap.devices.values() if r.online) if snap else 0
    left = ""
    if state.deadline is not None:
        left = f" · {max(0, state.deadline - time.monotonic()):.0f} s left (Ctrl-C ends early)"
    header = Text.assemble(
        ("lepton-edge demo", "bold"),
        "  dashboard (open in a browser):\n",
        (state.dashboard_url, "bold underline cyan"),
        f"\nbroker {state.broker} · {online}/{len(state.profiles)} devices online · ",
        ("phase: ", "dim"),
        (state.phase, "bold"),
        left,
    )
    parts: list[RenderableType] = [
        Panel(header, padding=(0, 1)),
        device_table(snap, state.profiles),
        Text(f"rollout: {rollout_progress(snap.rollout if snap else None)}"),
    ]
    switches = [e for e in snap.switches if is_variant_switch(e)] if snap else []
    switches.sort(key=lambda e: float(e.get("ts") or 0))
    if switches:
        lines = [f"{len(switches)} precision switch(es); latest:"]
        for e in switches[-4:]:
            data = e.get("data") or {}
            lines.append(
                f"  {e.get('device_id')}: {data.get('from_variant') or '–'} → "
                f"{data.get('to_variant')}  ({e.get('reason')})"
            )
        parts.append(Text("\n".join(lines), style="magenta"))
    if live:
        for note in state.notes[-3:]:
            parts.append(Text(note, style="yellow"))
    return Group(*parts)
