"""The demo's closing summary, gathered from the controller's API (the single source of facts).

Per device: its ladder and why, precision switches, accuracy, latency and energy. The same
dict is printed as tables and, with `--summary-json`, written as JSON for tests and scripts.
"""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console
from rich.table import Table

from controller.demo.client import ControllerClient
from controller.demo.profiles import DeviceProfile


def is_variant_switch(event: dict[str, Any]) -> bool:
    """A precision-switch event that really changed the variant (not only the power level)."""
    data = event.get("data") or {}
    return bool(data.get("to_variant")) and data.get("from_variant") != data.get("to_variant")


def _frames_weighted(history: list[dict[str, Any]], key: str) -> float | None:
    num = den = 0.0
    for sample in history:
        inf = sample.get("inference") or {}
        value, frames = inf.get(key), inf.get("frames") or 0
        if value is not None and frames:
            num += value * frames
            den += frames
    return num / den if den else None


def _device_summary(
    client: ControllerClient,
    device_id: str,
    profile: DeviceProfile | None,
    bundle_id: str | None,
    switches: list[dict[str, Any]],
) -> dict[str, Any]:
    detail = client.device(device_id)
    history: list[dict[str, Any]] = list(detail.get("history") or detail.get("telemetry") or [])
    ladder: dict[str, Any] | None = None
    if bundle_id:
        try:
            ladder = client.ladder(device_id, bundle_id)
        except Exception as exc:  # a device with no eligible variant still gets a row
            ladder = {"error": str(exc)}
    frames = sum(int((s.get("inference") or {}).get("frames") or 0) for s in history)
    p99s: list[float] = [
        float(p)
        for p in ((s.get("inference") or {}).get("latency_p99_ms") for s in history)
        if p is not None
    ]
    batteries = [s["battery"]["percent"] for s in history if s.get("battery")]
    energy_wh = None
    if profile is not None and profile.battery is not None and len(batteries) >= 2:
        energy_wh = (batteries[0] - batteries[-1]) / 100.0 * profile.battery.capacity_wh
    joules = _frames_weighted(history, "joules_per_inference")
    events = [e for e in switches if e.get("device_id") == device_id]
    events.sort(key=lambda e: float(e.get("ts") or 0))
    mine = [e for e in events if is_variant_switch(e)]
    last_tel = detail.get("last_telemetry") or {}
    return {
        "device_id": device_id,
        "profile": profile.description if profile else None,
        "online": bool(detail.get("online")),
        "hardware_class": detail.get("hardware_class"),
        "active_bundle": detail.get("active_bundle"),
        "active_variant": detail.get("active_variant"),
        "power_level": detail.get("power_level") or last_tel.get("power_level"),
        "ladder": ladder,
        "switches": [
            {
                "ts": e.get("ts"),
                "from_variant": (e.get("data") or {}).get("from_variant"),
                "to_variant": (e.get("data") or {}).get("to_variant"),
                "from_level": (e.get("data") or {}).get("from_level"),
                "to_level": (e.get("data") or {}).get("to_level"),
                "reason": e.get("reason"),
            }
            for e in mine
        ],
        "level_changes": [
            {
                "ts": e.get("ts"),
                "from_level": (e.get("data") or {}).get("from_level"),
                "to_level": (e.get("data") or {}).get("to_level"),
                "reason": e.get("reason"),
            }
            for e in events
        ],
        "frames": frames,
        "accuracy": _frames_weighted(history, "accuracy"),
        "latency_p99_ms_median": statistics.median(p99s) if p99s else None,
        "battery_start_percent": batteries[0] if batteries else None,
        "battery_end_percent": batteries[-1] if batteries else None,
        "energy_wh": energy_wh,
        "joules_per_inference": joules,
        "telemetry_samples": len(history),
    }


def _ladder_body(ladder: dict[str, Any] | None) -> dict[str, Any]:
    """The ladder itself, whether the API answers it bare or wrapped as {"ladder": ...}."""
    if not ladder:
        return {}
    inner = ladder.get("ladder")
    return inner if isinstance(inner, dict) else ladder


def ladder_mapping(ladder: dict[str, Any] | None) -> dict[str, str]:
    """Power level -> variant id from a ladder answer of the API."""
    steps = _ladder_body(ladder).get("steps") or []
    return {s["level"]: s["variant_id"] for s in steps if "level" in s and "variant_id" in s}


def collect(
    client: ControllerClient,
    bundle_id: str | None,
    rollout_id: str | None,
    profiles: dict[str, DeviceProfile],
    fleet_live_at: float | None,
) -> dict[str, Any]:
    switches = client.events(kind="precision_switch", limit=1000)
    known = {d.get("device_id") or d.get("id") for d in client.devices()}
    device_ids = sorted(set(profiles) | {str(k) for k in known if k})
    devices = [_device_summary(client, d, profiles.get(d), bundle_id, switches) for d in device_ids]
    ladders = {
        tuple(sorted(ladder_mapping(d["ladder"]).items()))
        for d in devices
        if ladder_mapping(d["ladder"])
    }
    rollout = client.rollout(rollout_id) if rollout_id else None
    return {
        "bundle_id": bundle_id,
        "rollout": rollout,
        "devices": devices,
        "distinct_ladders": len(ladders),
        "precision_switches": sum(len(d["switches"]) for d in devices),
        "fleet_ran": fleet_live_at is not None,
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _num(v: float | None, digits: int = 2, unit: str = "") -> str:
    return "–" if v is None else f"{v:.{digits}f}{unit}"


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    console.rule("[bold]lepton-edge demo: summary")
    rollout = summary.get("rollout") or {}
    console.print(
        f"bundle {summary.get('bundle_id') or '–'} · rollout "
        f"{rollout.get('id', '–')} {rollout.get('state') or rollout.get('status') or ''} · "
        f"{summary['distinct_ladders']} distinct ladders · "
        f"{summary['precision_switches']} precision switches · "
        f"{sum(len(d['level_changes']) for d in summary['devices'])} power-level changes"
    )
    table = Table(header_style="bold", expand=True)
    for col in (
        "device",
        "ladder (performance → critical)",
        "precision switches (to level)",
        "live accuracy",
        "median p99 ms",
        "energy (simulated battery)",
    ):
        table.add_column(col)
    for d in summary["devices"]:
        mapping = ladder_mapping(d.get("ladder"))
        ladder_text = (
            " → ".join(
                mapping.get(level, "–")
                for level in ("performance", "balanced", "saver", "critical")
            )
            if mapping
            else (d.get("ladder") or {}).get("error", "no ladder")
        )
        switches = (
            ", ".join(f"{s['from_variant'] or '–'}→{s['to_variant']}" for s in d["switches"])
            or "none"
        )
        energy = f"{d['energy_wh']:.2f} Wh" if d.get("energy_wh") is not None else "mains"
        if d.get("joules_per_inference") is not None:
            energy += f", {d['joules_per_inference']:.2f} J/frame"
        table.add_row(
            d["device_id"],
            ladder_text,
            switches,
            _pct(d.get("accuracy")),
            _num(d.get("latency_p99_ms_median")),
            energy,
        )
    console.print(table)
    console.print(
        "[bold]why each ladder[/] (from latency measured on the device and accuracy in the manifest)"
    )
    for d in summary["devices"]:
        first, *rest = explain_ladder(d.get("ladder"))
        console.print(f"  [bold]{d['device_id']}[/] {first}")
        for line in rest:
            console.print(f"    {line}")


def explain_ladder(ladder: dict[str, Any] | None) -> list[str]:
    """A few lines: each distinct variant with its levels and why, then what was left out."""
    body = _ladder_body(ladder)
    steps = body.get("steps") or []
    if not steps:
        return [str((ladder or {}).get("error", "no ladder"))]
    lines: list[str] = []
    seen: dict[str, list[str]] = {}
    whys: dict[str, str] = {}
    for step in steps:
        seen.setdefault(step["variant_id"], []).append(step["level"])
        whys.setdefault(step["variant_id"], step.get("why", ""))
    for variant, levels in seen.items():
        lines.append(f"{', '.join(levels)}: {variant} ({whys[variant]})")
    groups: dict[str, list[str]] = {}
    for variant, why in (body.get("rejected") or {}).items():
        dominated = why.startswith(("slower", "no more accurate", "dominated"))
        key = "dominated by a cheaper or more accurate variant" if dominated else why
        groups.setdefault(key, []).append(variant)
    for why, variants in groups.items():
        lines.append(f"[dim]not chosen, {why}: {', '.join(variants)}[/]")
    return lines
