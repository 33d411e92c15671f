"""Staged rollouts: waves of devices, health gates, automatic pause and rollback.

All state lives in the database (`rollouts`, `rollout_devices`, `commands`), and every command
goes through the ledger (`lepton_edge.controller.commands`): recorded with its id before it is
published, resent under that id until a final reply, so a controller restarted mid-rollout
carries on where it was and no device is deployed twice. A rollback names the bundle it undoes
and the one it returns to, and only devices that may run the new bundle are sent one. Offline
devices stay `pending` and get their deployment when they come back. The loop only acts while
this controller is the leader (`lepton_edge.controller.leader`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lepton_edge.controller import commands
from lepton_edge.controller.config import ControllerSettings, RolloutDefaults
from lepton_edge.controller.db import Database
from lepton_edge.controller.leader import Leader
from lepton_edge.controller.selection import NoEligibleVariant, ladder_for
from lepton_edge.controller.tables import Bundle, CommandRecord, Device, DeviceTag
from lepton_edge.controller.tables import Rollout as RolloutRow
from lepton_edge.controller.tables import RolloutDevice as RolloutDeviceRow
from lepton_edge.shared.hardware import HardwareProfile
from lepton_edge.shared.manifest import Manifest
from lepton_edge.shared.messages import CommandMessage, Deploy, Rollback

log = logging.getLogger(__name__)

Publish = Callable[[str, CommandMessage], bool]

#: Rollout states. `completed` rollouts still deploy devices that were offline.
STATES = ("running", "paused", "completed", "aborted")
#: Device states within a rollout.
DEVICE_STATES = (
    "pending",
    "deploying",
    "healthy",
    "failed",
    "rolling_back",
    "rolled_back",
    "skipped",
)


class RolloutTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    all: bool = False
    tags: list[str] = Field(default_factory=list, description="devices having ANY of these tags")
    device_ids: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_a_target(self) -> RolloutTarget:
        if not (self.all or self.tags or self.device_ids):
            raise ValueError("name a target: all=true, tags or device_ids")
        return self


class RolloutOptions(BaseModel):
    """Per-rollout overrides of `RolloutDefaults` (unset = the controller's default)."""

    model_config = ConfigDict(extra="forbid")

    success_threshold: float | None = Field(default=None, gt=0, le=1)
    error_threshold: float | None = Field(default=None, ge=0, lt=1)
    wave_timeout_s: float | None = Field(default=None, gt=0, le=7 * 86400)
    soak_s: float | None = Field(default=None, ge=0, le=7 * 86400)
    require_inferring: bool | None = None
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    p99_factor: float | None = Field(default=None, ge=1, le=1000)
    max_concurrent_deploys: int | None = Field(default=None, ge=1, le=1_000_000)

    def resolve(self, defaults: RolloutDefaults) -> dict[str, Any]:
        out = {k: getattr(defaults, k) for k in type(self).model_fields}
        out.update({k: v for k, v in self.model_dump().items() if v is not None})
        return out


class RolloutError(Exception):
    """A request that cannot be carried out; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def plan_waves(n: int, percents: list[float]) -> list[int]:
    """Cumulative device counts per wave: at least one new device each, the last = all."""
    counts: list[int] = []
    for p in [*percents[:-1], 100.0]:
        prev = counts[-1] if counts else 0
        if prev >= n:
            break
        counts.append(min(n, max(prev + 1, math.ceil(n * p / 100 - 1e-9))))
    return counts


class RolloutEngine:
    """Creates rollouts and moves them forward one `tick()` at a time."""

    def __init__(
        self,
        settings: ControllerSettings,
        db: Database,
        publish: Publish,
        leader: Leader,
        grant: Callable[[str, str], str],
        observe_wave: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.observe_wave = observe_wave  # seconds from a wave's release to its gate passing
        self.publish = publish
        self.leader = leader
        self.grant = grant  # (device id, bundle id) -> its download grant
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0

    # --- the loop -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rollout-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.rollout.tick_s):
            try:
                if self.leader.is_leader():
                    self.tick()
            except Exception:
                log.exception("rollout loop: tick failed; retrying")

    # --- requests -------------------------------------------------------------------------------

    def create(
        self,
        session: Session,
        bundle_id: str,
        target: RolloutTarget,
        waves: list[float] | None = None,
        options: RolloutOptions | None = None,
    ) -> RolloutRow:
        """Plan a rollout of `bundle_id` to `target` in cumulative `waves` (percentages)."""
        bundle = session.get(Bundle, bundle_id)
        if bundle is None:
            raise RolloutError(404, f"bundle {bundle_id} not found")
        devices = self._target_devices(session, target)
        if not devices:
            raise RolloutError(409, "the target matches no device")
        missing = sorted(set(target.device_ids) - {d.id for d in devices})
        if missing:
            raise RolloutError(404, f"device(s) not found: {', '.join(missing)}")
        # Canary first among devices that are online now, so the first wave can start at once.
        devices.sort(key=lambda d: (not d.online, d.id))
        percents = waves or self.settings.rollout.waves
        counts = plan_waves(len(devices), percents)
        now = time.time()
        rollout = RolloutRow(
            id=f"ro-{uuid.uuid4().hex[:10]}",
            bundle_id=bundle.id,
            target=target.model_dump(),
            waves=counts,
            options=(options or RolloutOptions()).resolve(self.settings.rollout),
            state="running",
            current_wave=0,
            wave_started_at=now,
            reason="",
            created_at=now,
            updated_at=now,
        )
        session.add(rollout)
        session.flush()
        # A newer rollout supersedes older ones for the same devices.
        ids = [d.id for d in devices]
        for older in session.scalars(
            select(RolloutDeviceRow).where(
                RolloutDeviceRow.device_id.in_(ids),
                RolloutDeviceRow.state == "pending",
                RolloutDeviceRow.rollout_id != rollout.id,
            )
        ):
            older.state = "skipped"
            older.detail = f"superseded by rollout {rollout.id}"
        wave = 0
        for i, device in enumerate(devices):
            while i >= counts[wave]:
                wave += 1
            session.add(
                RolloutDeviceRow(
                    rollout_id=rollout.id, device_id=device.id, wave=wave, state="pending"
                )
            )
        return rollout

    def _target_devices(self, session: Session, target: RolloutTarget) -> list[Device]:
        if target.all:
            return list(session.scalars(select(Device)))
        query = select(Device)
        conditions = []
        if target.device_ids:
            conditions.append(Device.id.in_(target.device_ids))
        if target.tags:
            conditions.append(
                Device.id.in_(select(DeviceTag.device_id).where(DeviceTag.tag.in_(target.tags)))
            )
        return list(session.scalars(query.where(or_(*conditions))))

    # Pause, resume and abort commit before they let go of the engine's lock, and hold the
    # rollout's row lock (PostgreSQL) while they decide: neither this controller's tick nor
    # another replica's can release or deploy a wave in between.

    def pause(
        self, session: Session, rollout_id: str, reason: str = "paused by user"
    ) -> RolloutRow:
        with self.lock:
            rollout = self._get(session, rollout_id)
            if rollout.state != "running":
                raise RolloutError(409, f"rollout {rollout_id} is {rollout.state}, not running")
            self._set_state(rollout, "paused", reason)
            session.commit()
            return rollout

    def resume(self, session: Session, rollout_id: str) -> RolloutRow:
        """Carry on; a wave that was rolled back is tried again."""
        with self.lock:
            rollout = self._get(session, rollout_id)
            if rollout.state != "paused":
                raise RolloutError(409, f"rollout {rollout_id} is {rollout.state}, not paused")
            for rd in self.devices(session, rollout.id, wave=rollout.current_wave):
                if rd.state in ("failed", "rolling_back", "rolled_back"):
                    rd.state = "pending"
                    rd.detail = "retried after resume"
                    rd.command_id = None
                    rd.rollback_command_id = None
            rollout.wave_started_at = time.time()
            rollout.wave_succeeded_at = None
            self._set_state(rollout, "running", "resumed")
            session.commit()
            return rollout

    def abort(self, session: Session, rollout_id: str) -> RolloutRow:
        """Stop for good: nothing more is deployed; devices keep what they run now."""
        with self.lock:
            rollout = self._get(session, rollout_id)
            if rollout.state == "aborted":
                raise RolloutError(409, f"rollout {rollout_id} is already aborted")
            for rd in self.devices(session, rollout.id):
                if rd.state == "pending":
                    rd.state = "skipped"
                    rd.detail = "rollout aborted"
            self._set_state(rollout, "aborted", "aborted by user")
            rollout.finished_at = time.time()
            session.commit()
            return rollout

    def _get(self, session: Session, rollout_id: str) -> RolloutRow:
        rollout = session.get(RolloutRow, rollout_id, with_for_update=True, populate_existing=True)
        if rollout is None:
            raise RolloutError(404, f"rollout {rollout_id} not found")
        return rollout

    @staticmethod
    def _set_state(rollout: RolloutRow, state: str, reason: str) -> None:
        log.info("rollout %s: %s -> %s (%s)", rollout.id, rollout.state, state, reason)
        rollout.state = state
        rollout.reason = reason
        rollout.updated_at = time.time()

    @staticmethod
    def devices(
        session: Session, rollout_id: str, wave: int | None = None
    ) -> list[RolloutDeviceRow]:
        query = select(RolloutDeviceRow).where(RolloutDeviceRow.rollout_id == rollout_id)
        if wave is not None:
            query = query.where(RolloutDeviceRow.wave == wave)
        return list(session.scalars(query.order_by(RolloutDeviceRow.device_id)))

    # --- one step ---------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Advance every active rollout once; publish what was decided after committing it."""
        outbox: list[tuple[str, CommandMessage]] = []
        with self.lock:
            with self.db.session() as session:
                # Completed rollouts only matter while a device still waits (was offline).
                waiting = select(RolloutDeviceRow.rollout_id).where(
                    RolloutDeviceRow.state.in_(("pending", "deploying", "rolling_back"))
                )
                for rollout in session.scalars(
                    select(RolloutRow)
                    .where(
                        RolloutRow.state.in_(("running", "paused"))
                        | ((RolloutRow.state == "completed") & RolloutRow.id.in_(waiting))
                    )
                    .order_by(RolloutRow.created_at)
                    .with_for_update()  # an API call on another replica waits for this tick
                ):
                    self._advance(session, rollout, now or time.time(), outbox)
                session.flush()
                resends = commands.due(session, now or time.time(), self.settings.rollout)
            # Committed: a crash from here on only means a resend with the same command id.
            new = {c.command_id for _, c in outbox}
            sent: list[str] = []
            for device_id, command in outbox + [r for r in resends if r[1].command_id not in new]:
                if self.publish(device_id, command):
                    sent.append(command.command_id)
            if sent:
                with self.db.session() as session:
                    commands.mark_sent(session, sent, time.time())
        self.ticks += 1

    def _advance(
        self,
        session: Session,
        rollout: RolloutRow,
        now: float,
        outbox: list[tuple[str, CommandMessage]],
    ) -> None:
        opts = rollout.options
        rds = self.devices(session, rollout.id)
        devices = {
            d.id: d
            for d in session.scalars(
                select(Device).where(Device.id.in_([r.device_id for r in rds]))
            )
        }
        sent = {
            c.id: c
            for c in session.scalars(
                select(CommandRecord).where(CommandRecord.rollout_id == rollout.id)
            )
        }
        bundle = session.get(Bundle, rollout.bundle_id)
        if bundle is None:  # deleted under us
            self._set_state(rollout, "aborted", f"bundle {rollout.bundle_id} no longer exists")
            return
        manifest = Manifest.model_validate(bundle.manifest)

        # 1) follow up on commands already sent, whatever the rollout state
        for rd in rds:
            device = devices.get(rd.device_id)
            if rd.state == "deploying" and device is not None:
                self._check_deploy(rd, device, sent.get(rd.command_id or ""), rollout, opts, now)
            elif rd.state == "rolling_back":
                cmd = sent.get(rd.rollback_command_id or "")
                if cmd is not None and cmd.status in commands.FINAL:
                    rd.state = "rolled_back"
                    rd.detail = f"rollback {cmd.status}{': ' + cmd.detail if cmd.detail else ''}"

        if rollout.state == "aborted" or rollout.state == "paused":
            return

        # 2) deploy to pending devices of released waves that are online now, at most
        #    `max_concurrent_deploys` deploying at once (a rollout made before has no limit)
        limit = opts.get("max_concurrent_deploys")
        busy = sum(r.state == "deploying" for r in rds)
        for rd in rds:
            if limit is not None and busy >= limit:
                break
            if rd.state == "pending" and rd.wave <= rollout.current_wave:
                device = devices.get(rd.device_id)
                if device is not None and device.online:
                    self._deploy(session, rd, device, manifest, rollout, now, outbox)
                    busy += rd.state == "deploying"

        if rollout.state == "completed":
            return

        # 3) gate the current wave
        wave_rds = [r for r in rds if r.wave == rollout.current_wave]
        n = len(wave_rds)
        healthy = sum(r.state == "healthy" for r in wave_rds)
        failed = [r for r in wave_rds if r.state == "failed"]
        wave_no = rollout.current_wave + 1
        if n and len(failed) / n > opts["error_threshold"]:
            details = "; ".join(f"{r.device_id}: {r.detail}" for r in failed[:3])
            self._set_state(
                rollout,
                "paused",
                f"wave {wave_no}: {len(failed)}/{n} failed ({details}); wave rolled back",
            )
            for r in wave_rds:
                if self._may_run_new(r, devices.get(r.device_id), sent, rollout):
                    self._rollback(session, r, rollout, now, outbox)
            return
        if n and healthy / n >= opts["success_threshold"] - 1e-9:
            if rollout.wave_succeeded_at is None:
                rollout.wave_succeeded_at = now
                rollout.updated_at = now
            if now - rollout.wave_succeeded_at >= opts["soak_s"]:
                if self.observe_wave is not None and rollout.wave_started_at is not None:
                    self.observe_wave(now - rollout.wave_started_at)
                if rollout.current_wave + 1 >= len(rollout.waves):
                    self._set_state(rollout, "completed", f"all {len(rollout.waves)} waves healthy")
                    rollout.finished_at = now
                else:
                    rollout.current_wave += 1
                    rollout.wave_started_at = now
                    rollout.wave_succeeded_at = None
                    rollout.reason = (
                        f"wave {wave_no} healthy ({healthy}/{n}); wave {wave_no + 1} released"
                    )
                    rollout.updated_at = now
            return
        if now - (rollout.wave_started_at or now) > opts["wave_timeout_s"]:
            self._set_state(
                rollout,
                "paused",
                f"wave {wave_no} timed out after {opts['wave_timeout_s']:g} s: {healthy}/{n} healthy"
                f" (needs {opts['success_threshold']:.0%}); resume to wait again",
            )

    def _deploy(
        self,
        session: Session,
        rd: RolloutDeviceRow,
        device: Device,
        manifest: Manifest,
        rollout: RolloutRow,
        now: float,
        outbox: list[tuple[str, CommandMessage]],
    ) -> None:
        if device.hardware is None:
            return  # no birth message yet; wait for it
        profile = HardwareProfile.model_validate(device.hardware)
        try:
            selection = ladder_for(session, self.settings.selection, manifest, profile)
        except NoEligibleVariant as exc:
            rd.state = "failed"
            rd.detail = str(exc)
            return
        base = self.settings.base_url()
        command = Deploy(
            command_id=commands.new_command_id("deploy"),
            ts=now,
            bundle_id=manifest.bundle_id,
            manifest_url=f"{base}/bundles/{manifest.bundle_id}/manifest.json",
            artifact_base_url=f"{base}/artifacts",
            ladder=selection.ladder.mapping(),
            rollout_id=rollout.id,
            download_token=self.grant(device.id, manifest.bundle_id),
        )
        commands.record(session, device.id, command, rollout.id, now)
        rd.state = "deploying"
        rd.command_id = command.command_id
        rd.previous_bundle = device.active_bundle
        rd.ladder = {k.value: v for k, v in selection.ladder.mapping().items()}
        inference = (device.last_telemetry or {}).get("inference") or {}
        rd.baseline_p99_ms = inference.get("latency_p99_ms")
        rd.sent_at = now
        rd.detail = "deploy sent"
        outbox.append((device.id, command))

    @staticmethod
    def _may_run_new(
        rd: RolloutDeviceRow,
        device: Device | None,
        sent: dict[str, CommandRecord],
        rollout: RolloutRow,
    ) -> bool:
        """Whether a rollback is owed: the device activated the new bundle, or its deploy is
        still open (the rollback names the bundle, so an agent that never got there refuses
        it). A device whose deploy failed still runs what it ran: nothing to undo."""
        if rd.state not in ("deploying", "healthy", "failed") or not rd.command_id:
            return False
        if device is not None and device.active_bundle == rollout.bundle_id:
            return True
        deploy = sent.get(rd.command_id)
        return deploy is None or deploy.status not in ("failed", "rejected", "timed_out")

    def _check_deploy(
        self,
        rd: RolloutDeviceRow,
        device: Device,
        cmd: CommandRecord | None,
        rollout: RolloutRow,
        opts: dict[str, Any],
        now: float,
    ) -> None:
        if cmd is None:
            return
        if cmd.status != "done" and device.active_bundle == rollout.bundle_id:
            # its state says it runs the bundle: the reply was lost or is still on its way
            commands.finish(cmd, "done", "the device's state shows the bundle active", now)
        if cmd.status in ("failed", "rejected", "timed_out"):
            rd.state = "failed"
            rd.detail = f"deploy {cmd.status}: {cmd.detail or 'no detail'}"
            return
        if cmd.status != "done":
            return  # the ledger resends it
        if device.active_bundle != rollout.bundle_id:
            return  # not reported yet
        # Health is judged on telemetry made after the deploy was sent.
        tel = device.last_telemetry or {}
        fresh = device.last_telemetry_at is not None and device.last_telemetry_at >= (
            rd.sent_at or 0
        )
        if not opts["require_inferring"]:
            rd.state = "healthy"
            rd.healthy_at = now
            rd.detail = f"running {rollout.bundle_id}"
            return
        if not fresh or tel.get("active_bundle") != rollout.bundle_id:
            return
        inference = tel.get("inference") or {}
        frames = int(inference.get("frames") or 0)
        errors = int(inference.get("errors") or 0)
        if frames + errors == 0:
            return  # not inferring yet; the wave timeout decides
        error_rate = errors / (frames + errors)
        if error_rate > opts["max_error_rate"]:
            rd.state = "failed"
            rd.detail = f"error rate {error_rate:.1%} > {opts['max_error_rate']:.1%}"
            return
        p99 = inference.get("latency_p99_ms")
        base = rd.baseline_p99_ms
        if p99 is not None and base and p99 > base * opts["p99_factor"]:
            rd.state = "failed"
            rd.detail = f"p99 {p99:.2f} ms > {opts['p99_factor']:g} x {base:.2f} ms before"
            return
        rd.state = "healthy"
        rd.healthy_at = now
        rd.detail = f"inferring on {tel.get('active_variant')}: {frames} frames, {errors} errors"

    def _rollback(
        self,
        session: Session,
        rd: RolloutDeviceRow,
        rollout: RolloutRow,
        now: float,
        outbox: list[tuple[str, CommandMessage]],
    ) -> None:
        command = Rollback(
            command_id=commands.new_command_id("rollback"),
            ts=now,
            reason=f"rollout {rollout.id}: {rollout.reason}",
            rollout_id=rollout.id,
            from_bundle=rollout.bundle_id,
            to_bundle=rd.previous_bundle,
        )
        commands.record(session, rd.device_id, command, rollout.id, now)
        rd.state = "rolling_back"
        rd.rollback_command_id = command.command_id
        rd.detail = f"{rd.detail}; rolling back" if rd.detail else "rolling back"
        outbox.append((rd.device_id, command))
