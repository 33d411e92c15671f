"""The demo's closing summary, gathered from the controller's API (the single source of facts).

Per device: its ladder and why, precision switches, accuracy, latency and energy. The same
dict is printed as tables and, with `--summary-json`, written as JSON for tests and scripts.
"""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console

from lepton_edge.controller.demo.client import ControllerClient
from lepton_edge.controller.demo.profiles import DeviceProfile


def is_level_change(event: dict[str, Any]) -> bool:
    """A power-level change: every precision switch, and a policy event that carries levels
    (the level changed but the variant stayed; a policy set by command carries none)."""
    if event.get("kind") == "precision_switch":
        return True
    return event.get("kind") == "policy" and bool((event.get("data") or {}).get("to_level"))


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
    level_events: list[dict[str, Any]],
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
    events = [e for e in level_events if e.get("device_id") == device_id]
    events.sort(key=lambda e: float(e.get("ts") or 0))
    mine = [e for e in events if e.get("kind") == "precision_switch"]
    last_tel = detail.get("last_telemetry") or {}
    return {
        "device_id": device_id,
        "profile": profile.description if profile else None,
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
    online_at_end: dict[str, bool] | None = None,
    camera: tuple[str, DeviceProfile, str | None, str | None] | None = None,
) -> dict[str, Any]:
    """The summary from the API; `online_at_end`: who was online when the demo ended.
    `camera`: (device id, profile, its bundle, its rollout), summarised on its own."""
    level_events = [
        e
        for kind in ("precision_switch", "policy")
        for e in client.events(kind=kind, limit=1000)
        if is_level_change(e)
    ]
    known = {d.get("device_id") or d.get("id") for d in client.devices()}
    device_ids = sorted(set(profiles) | {str(k) for k in known if k})
    if camera is not None and camera[0] in device_ids:
        device_ids.remove(camera[0])
    devices = [
        _device_summary(client, d, profiles.get(d), bundle_id, level_events) for d in device_ids
    ]
    for d in devices:
        d["online_at_end"] = (online_at_end or {}).get(d["device_id"], False)
    ladders = {
        tuple(sorted(ladder_mapping(d["ladder"]).items()))
        for d in devices
        if ladder_mapping(d["ladder"])
    }
    rollout = client.rollout(rollout_id) if rollout_id else None
    summary = {
        "bundle_id": bundle_id,
        "rollout": rollout,
        "devices": devices,
        "distinct_ladders": len(ladders),
        "precision_switches": sum(len(d["switches"]) for d in devices),
        "fleet_ran": fleet_live_at is not None,
    }
    if camera is not None:
        summary["camera"] = _camera_summary(client, camera, level_events, online_at_end or {})
    return summary


def _camera_summary(
    client: ControllerClient,
    camera: tuple[str, DeviceProfile, str | None, str | None],
    level_events: list[dict[str, Any]],
    online_at_end: dict[str, bool],
) -> dict[str, Any]:
    """The camera device: its detector bundle, ladder, switches and what it saw last."""
    device_id, profile, bundle_id, rollout_id = camera
    row = _device_summary(client, device_id, profile, bundle_id, level_events)
    row["online_at_end"] = online_at_end.get(device_id, False)
    row["bundle_id"] = bundle_id
    row["rollout"] = client.rollout(rollout_id) if rollout_id else None
    results = client.get(f"/devices/{device_id}/results")
    row["last_result"] = results.get("latest") if isinstance(results, dict) else None
    detail = client.device(device_id)
    row["results_published"] = sum(
        int((s.get("inference") or {}).get("results_published") or 0)
        for s in detail.get("history") or []
    )
    return row


def _num(v: float | None, digits: int = 2, unit: str = "") -> str:
    return "–" if v is None else f"{v:.{digits}f}{unit}"


SHORT_LEVEL = {"performance": "perf", "balanced": "bal", "saver": "saver", "critical": "crit"}


def compact_ladder(ladder: dict[str, Any] | None) -> str:
    """`tflite-fp32 (perf, bal) → tflite-int8-dynamic (saver, crit)`."""
    mapping = ladder_mapping(ladder)
    if not mapping:
        return str((ladder or {}).get("error", "no ladder"))
    groups: dict[str, list[str]] = {}
    for level in ("performance", "balanced", "saver", "critical"):
        if level in mapping:
            groups.setdefault(mapping[level], []).append(SHORT_LEVEL[level])
    return " → ".join(f"{v} ({', '.join(levels)})" for v, levels in groups.items())


def _energy(d: dict[str, Any]) -> str:
    used = d.get("energy_wh")
    if used is None:
        text = "on mains"
    elif used < 0:
        text = f"charged {-used:.2f} Wh"
    else:
        text = f"{used:.2f} Wh drawn"
    if d.get("joules_per_inference") is not None:
        text += f", {d['joules_per_inference']:.2f} J per frame"
    return text


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """Per device: its ladder, what it switched, accuracy, latency, energy, and why the ladder."""
    console.rule("[bold]lepton-edge demo: summary")
    rollout = summary.get("rollout") or {}
    console.print(
        f"bundle {summary.get('bundle_id') or '–'} · rollout "
        f"{rollout.get('id', '–')} {rollout.get('state') or ''} · "
        f"[bold]{summary['distinct_ladders']} distinct ladders[/] · "
        f"[bold]{summary['precision_switches']} precision switches[/] · "
        f"{sum(len(d['level_changes']) for d in summary['devices'])} power-level changes"
    )
    console.print("[dim]energy is the simulated battery's (time-scaled); the rest is measured[/]")
    for d in summary["devices"]:
        console.print()
        console.print(f"[bold]{d['device_id']}[/] [dim]{d.get('profile') or ''}[/]")
        console.print(f"  ladder: [cyan]{compact_ladder(d.get('ladder'))}[/]")
        switches = ", ".join(
            f"{s['from_variant']} → {s['to_variant']} at {s['to_level']}" for s in d["switches"]
        )
        console.print(f"  precision switches: [magenta]{switches or 'none'}[/]")
        accuracy = "n/a" if d.get("accuracy") is None else f"{100 * d['accuracy']:.1f} %"
        p99 = d.get("latency_p99_ms_median")
        console.print(
            f"  {d['frames']} frames · live accuracy {accuracy} · median p99 "
            f"{'–' if p99 is None else f'{p99:.2f} ms'} · {_energy(d)}"
        )
        for line in explain_ladder(d.get("ladder")):
            console.print(f"  [dim]why:[/] {line}" if not line.startswith("[dim]") else f"  {line}")
    camera = summary.get("camera")
    if camera:
        console.print()
        console.print(
            f"[bold]{camera['device_id']}[/] [dim]{camera.get('profile') or ''}[/] · bundle "
            f"{camera.get('bundle_id') or '–'}"
        )
        console.print(f"  ladder: [cyan]{compact_ladder(camera.get('ladder'))}[/]")
        switches = ", ".join(
            f"{s['from_variant']} → {s['to_variant']} at {s['to_level']}"
            for s in camera["switches"]
        )
        console.print(f"  precision switches: [magenta]{switches or 'none'}[/]")
        last = camera.get("last_result") or {}
        seen = ", ".join(
            f"{d['label']} {100 * d['score']:.0f} %" for d in last.get("detections") or []
        )
        console.print(
            f"  {camera['frames']} frames · {camera['results_published']} results on MQTT · "
            f"last frame: {seen or 'nothing detected'}"
        )


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
