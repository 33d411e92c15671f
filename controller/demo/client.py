"""The demo talks to its controller only through the public REST API, like any user would.

`Snapshot` is one poll of the fleet, normalized for the terminal view and the summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from lepton_edge.shared.errors import UserError


class ApiError(RuntimeError):
    pass


class ControllerClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=f"{self.base_url}/api/v1", headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            detail = response.text[:300]
            raise ApiError(
                f"{response.request.method} {response.request.url.path}: HTTP {response.status_code} {detail}"
            )
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self._check(self._http.get(path, params=clean))

    def put(self, path: str, json: Any = None) -> Any:
        return self._check(self._http.put(path, json=json))

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self._check(self._http.post(path, json=json, **kwargs))

    # --- resources -------------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        return _items(self.get("/devices"), "devices")

    def device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/devices/{device_id}")
        return result

    def ladder(self, device_id: str, bundle_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/devices/{device_id}/ladder", bundle_id=bundle_id)
        return result

    def events(self, kind: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        return _items(self.get("/events", kind=kind, limit=limit), "events")

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/rollouts/{rollout_id}")
        return result

    def read_token(self, name: str) -> str:
        """A new read-only API token (for the dashboard URL)."""
        return str(self.post("/tokens", json={"scope": "read", "name": name})["token"])


def _items(payload: Any, key: str) -> list[dict[str, Any]]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for k in (key, "items"):
            if isinstance(payload.get(k), list):
                return list(payload[k])
    return []


# --- one poll of the fleet, normalized ---------------------------------------------------------


@dataclass
class DeviceRow:
    device_id: str
    online: bool
    power_level: str | None
    variant: str | None
    bundle: str | None
    fps: float | None
    p99_ms: float | None
    accuracy: float | None
    battery_percent: float | None
    charging: bool | None
    seq: int | None = None
    frames: int = 0


@dataclass
class Snapshot:
    taken_at: float
    devices: dict[str, DeviceRow] = field(default_factory=dict)
    rollout: dict[str, Any] | None = None
    switches: list[dict[str, Any]] = field(default_factory=list)


def device_row(d: dict[str, Any]) -> DeviceRow:
    tel = d.get("last_telemetry") or {}
    inference = tel.get("inference") or {}
    battery = tel.get("battery") or {}
    return DeviceRow(
        device_id=str(d["id"]),
        online=bool(d.get("online")),
        power_level=d.get("power_level") or tel.get("power_level"),
        variant=d.get("active_variant") or tel.get("active_variant"),
        bundle=d.get("active_bundle") or tel.get("active_bundle"),
        fps=inference.get("fps"),
        p99_ms=inference.get("latency_p99_ms"),
        accuracy=inference.get("accuracy"),
        battery_percent=battery.get("percent"),
        charging=battery.get("charging") if battery else None,
        seq=tel.get("seq"),
        frames=int(inference.get("frames") or 0),
    )


def snapshot(client: ControllerClient, rollout_id: str | None) -> Snapshot:
    snap = Snapshot(taken_at=time.time())
    for d in client.devices():
        row = device_row(d)
        snap.devices[row.device_id] = row
    if rollout_id:
        snap.rollout = client.rollout(rollout_id)
    snap.switches = client.events(kind="precision_switch", limit=200)
    return snap


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll `check()` until it returns something truthy; `UserError` naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (ApiError, httpx.HTTPError) as exc:
            last_error = exc
        time.sleep(interval)
    hint = f" (last error: {last_error})" if last_error else ""
    raise UserError(f"timed out after {timeout:.0f} s waiting for {what}{hint}")
