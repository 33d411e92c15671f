"""What the agent does with each controller command: deploy, rollback, benchmark, set_policy.

`CommandHandlers.handle(payload)` decodes, deduplicates by command id (`outbox.CommandLog`) and
dispatches; every command that carries a readable id gets a reply.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from lepton_edge.agent.store import StoreError
from lepton_edge.shared.errors import MessageError
from lepton_edge.shared.messages import (
    MAX_PAYLOAD_BYTES,
    Benchmark,
    BenchmarkResult,
    Deploy,
    EventKind,
    Rollback,
    SetPolicy,
    VariantTiming,
    decode,
)
from lepton_edge.shared.topics import Kind

if TYPE_CHECKING:
    from lepton_edge.agent.service import Agent

log = logging.getLogger(__name__)

COMMAND_TYPES = ("deploy", "rollback", "benchmark", "set_policy")


class CommandHandlers:
    """The command side of one `Agent`: runs on its command thread, one command at a time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def handle(self, payload: bytes) -> None:
        """Decode, deduplicate by command id and dispatch by type."""
        try:
            command = decode(Kind.CMD, payload)
        except MessageError as exc:
            self._reject(payload, exc)
            return
        if not self.agent.command_log.begin(command.command_id):
            final = self.agent.command_log.final_reply(command.command_id)
            if final is not None:  # handled: its outcome again (the first reply may be lost)
                self.agent.resend_reply(final)
            else:
                self.agent.reply(command.command_id, "duplicate", "command id being handled")
            return
        try:
            match command:
                case Deploy():
                    self._deploy(command)
                case Rollback():
                    self._rollback(command)
                case Benchmark():
                    self._benchmark(command)
                case SetPolicy():
                    self._set_policy(command)
        finally:
            self.agent.command_log.finish(command.command_id)

    def _reject(self, payload: bytes, exc: MessageError) -> None:
        self.agent.rejected_commands += 1
        command_id, reason = _explain_bad_command(payload, exc)
        label = f"command {command_id}" if command_id else "command"
        self.agent.emit_event(
            EventKind.ERROR,
            f"rejected {label}: {reason}",
            {"bytes": len(payload), "field": exc.field},
            command_id=command_id,
        )
        if command_id:
            self.agent.reply(command_id, "rejected", reason)

    def _deploy(self, cmd: Deploy) -> None:
        data = {"bundle_id": cmd.bundle_id, "rollout_id": cmd.rollout_id}
        self.agent.reply(cmd.command_id, "accepted")
        self.agent.emit_event(
            EventKind.DEPLOY,
            f"downloading bundle {cmd.bundle_id}",
            {**data, "stage": "downloading"},
            cmd.command_id,
        )
        try:
            bundle = self.agent.store.fetch(
                cmd.bundle_id,
                cmd.manifest_url,
                cmd.artifact_base_url,
                list(cmd.ladder.values()),
                dict(cmd.ladder),
                token=cmd.download_token,
            )
        except (StoreError, OSError) as exc:
            self._deploy_failed(cmd, data, str(exc))
            return
        self.agent.emit_event(
            EventKind.DEPLOY,
            f"bundle {cmd.bundle_id} verified (signature and sha256 of every file)",
            {**data, "stage": "verified"},
            cmd.command_id,
        )
        refused = self.agent.activate_runner(bundle)
        if refused:
            self.agent.store.gc()
            self._deploy_failed(cmd, data, refused)
            return
        self.agent.store.activate(bundle)
        with self.agent.lock:
            self.agent.active = bundle
        self.agent.link.republish_state()
        self.agent.emit_event(
            EventKind.DEPLOY,
            f"bundle {cmd.bundle_id} activated",
            {**data, "stage": "activated"},
            cmd.command_id,
        )
        self.agent.reply(cmd.command_id, "done", f"bundle {cmd.bundle_id} active")
        self.agent.notifier.status(f"serving bundle {cmd.bundle_id}")

    def _deploy_failed(self, cmd: Deploy, data: dict[str, Any], reason: str) -> None:
        current = self.agent.active.bundle_id if self.agent.active else "none"
        self.agent.emit_event(
            EventKind.DEPLOY,
            f"deploy of {cmd.bundle_id} failed: {reason}; still serving {current}",
            {**data, "stage": "failed"},
            cmd.command_id,
        )
        self.agent.reply(cmd.command_id, "failed", reason)

    def _rollback(self, cmd: Rollback) -> None:
        before = self.agent.active.bundle_id if self.agent.active else None
        if cmd.from_bundle is not None and before != cmd.from_bundle:
            reason = (
                f"not serving {cmd.from_bundle} (serving {before or 'nothing'}): nothing to undo"
            )
            self.agent.reply(cmd.command_id, "rejected", reason)
            return
        try:
            kept = self.agent.store.previous()
        except StoreError:
            kept = None  # unreadable: the rollback below says why
        previous = kept.bundle_id if kept is not None else None
        if cmd.to_bundle is not None and previous != cmd.to_bundle:
            reason = f"the bundle before {before} is {previous or 'none'}, not {cmd.to_bundle}"
            self.agent.reply(cmd.command_id, "rejected", reason)
            return
        try:
            bundle = self.agent.store.rollback()
        except StoreError as exc:
            self.agent.reply(cmd.command_id, "failed", str(exc))
            self.agent.emit_event(EventKind.ROLLBACK, f"rollback failed: {exc}", {}, cmd.command_id)
            return
        refused = self.agent.activate_runner(bundle)
        if refused:
            self.agent.store.rollback()  # put the one that works back
            self.agent.reply(cmd.command_id, "failed", refused)
            return
        with self.agent.lock:
            self.agent.active = bundle
        self.agent.link.republish_state()
        reason = f"rolled back from {before} to {bundle.bundle_id}"
        if cmd.reason:
            reason += f": {cmd.reason}"
        self.agent.emit_event(
            EventKind.ROLLBACK,
            reason,
            {"from_bundle": before, "to_bundle": bundle.bundle_id, "rollout_id": cmd.rollout_id},
            cmd.command_id,
        )
        self.agent.reply(cmd.command_id, "done", reason)

    def _benchmark(self, cmd: Benchmark) -> None:
        if self.agent.runner is None:
            self.agent.reply(cmd.command_id, "failed", "this agent runs no inference engine")
            return
        self.agent.reply(cmd.command_id, "accepted")
        try:
            bundle = self.agent.store.fetch(
                cmd.bundle_id,
                cmd.manifest_url,
                cmd.artifact_base_url,
                cmd.variant_ids,
                token=cmd.download_token,
            )
        except (StoreError, OSError) as exc:
            self.agent.reply(cmd.command_id, "failed", str(exc))
            self.agent.emit_event(
                EventKind.BENCHMARK, f"benchmark failed: {exc}", {}, cmd.command_id
            )
            return
        try:
            timings = self.agent.runner.benchmark(
                bundle.dir, bundle.manifest, cmd.variant_ids, cmd.iterations
            )
            result = BenchmarkResult(
                hardware_class=self.agent.profile.hardware_class(),
                bundle_id=cmd.bundle_id,
                timings={k: VariantTiming.model_validate(v) for k, v in timings.items()},
            )
        except Exception as exc:
            log.exception("benchmark failed")
            self.agent.reply(cmd.command_id, "failed", f"benchmark failed: {exc}")
            return
        finally:
            self.agent.store.gc()
        self.agent.emit_event(
            EventKind.BENCHMARK,
            f"benchmarked {len(result.timings)} variant(s) of {cmd.bundle_id}",
            {"bundle_id": cmd.bundle_id},
            cmd.command_id,
        )
        self.agent.reply(cmd.command_id, "done", result=result.model_dump(mode="json"))

    def _set_policy(self, cmd: SetPolicy) -> None:
        if self.agent.runner is None:
            self.agent.reply(cmd.command_id, "failed", "this agent runs no inference engine")
            return
        try:
            self.agent.runner.set_policy(cmd)
        except Exception as exc:
            self.agent.reply(cmd.command_id, "failed", str(exc))
            return
        self.agent.emit_event(
            EventKind.POLICY,
            f"policy set: override={cmd.override}, max_fps={cmd.max_fps}",
            {"override": cmd.override, "max_fps": cmd.max_fps},
            cmd.command_id,
        )
        self.agent.reply(cmd.command_id, "done")


def _explain_bad_command(payload: bytes, exc: MessageError) -> tuple[str | None, str]:
    """(command id if one can be read, one-line reason) for a command that failed to decode."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, exc.reason
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, exc.reason
    if not isinstance(data, dict):
        return None, "not a JSON object"
    cid = data.get("command_id")
    command_id = cid if isinstance(cid, str) and 0 < len(cid) <= 128 else None
    kind = data.get("type")
    if kind not in COMMAND_TYPES:
        return command_id, (
            f"unknown command type {kind!r}; this agent knows {', '.join(COMMAND_TYPES)}"
        )
    return command_id, f"{exc.field}: {exc.reason}" if exc.field else exc.reason
