"""The agent service: one `Agent` per device owning its link, outbox, store and probes.

`lepton-agent run` builds one from settings and runs it under systemd (Type=notify).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from lepton_edge.agent.config import DEFAULT_CONFIG_FILE, AgentSettings, load_settings
from lepton_edge.agent.hardware import build_profile, machine_device_id
from lepton_edge.agent.link import MqttLink
from lepton_edge.agent.outbox import CommandLog, Outbox
from lepton_edge.agent.probes import build_probes
from lepton_edge.agent.store import ArtifactStore, Bundle, StoreError, read_public_key
from lepton_edge.shared import __version__
from lepton_edge.shared.errors import MessageError, SignatureError, TopicError, UserError
from lepton_edge.shared.hardware import HardwareProfile
from lepton_edge.shared.manifest import Manifest
from lepton_edge.shared.messages import (
    MAX_PAYLOAD_BYTES,
    BatterySample,
    Benchmark,
    BenchmarkResult,
    Deploy,
    Event,
    EventKind,
    InferenceStats,
    PowerLevel,
    Reply,
    Rollback,
    SetPolicy,
    State,
    Telemetry,
    ThermalSample,
    VariantTiming,
    decode,
    encode,
)
from lepton_edge.shared.systemd import Notifier
from lepton_edge.shared.topics import Kind, check_device_id

log = logging.getLogger(__name__)

COMMAND_TYPES = ("deploy", "rollback", "benchmark", "set_policy")
COMMAND_QUEUE = 100
OFFLINE_READY_AFTER_S = 15.0

#: How a runner tells the controller why something happened (precision switch, errors).
EmitEvent = Callable[[EventKind, str, dict[str, Any]], None]


@runtime_checkable
class Runner(Protocol):
    """The inference side of an agent (issue 5's `lepton_edge.agent.runner.InferenceRunner`).

    The agent calls these from its own threads; a runner must be safe to call concurrently
    with its own frame loop. `emit_event` is handed to the runner's constructor.
    """

    def activate(self, bundle_dir: Path, manifest: Manifest, ladder: dict[PowerLevel, str]) -> None:
        """Switch to a verified bundle; raise to refuse it (and keep serving the old one)."""

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


class Agent:
    """One device: probes, link, outbox, store and (optionally) a runner. No global state,
    so a demo can run several in one process.

    `start()` returns at once; `stop()` flushes the last telemetry, publishes `offline` and
    disconnects. The telemetry loop is the agent's main loop and pings the systemd watchdog.
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        runner: Runner | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.device_id = resolve_device_id(settings)
        self.runner = runner
        self.notifier = notifier or Notifier({})
        self.clock = clock
        self.ready = threading.Event()
        self.probes = build_probes(settings, self._runner_cpu_seconds)
        self.profile: HardwareProfile = build_profile(settings, self.probes.gpu)
        self.active: Bundle | None = None
        self.rejected_commands = 0
        self._stop = threading.Event()
        self._commands: queue.Queue[bytes | None] = queue.Queue(maxsize=COMMAND_QUEUE)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # active bundle vs. state messages
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------

    def attach_runner(self, runner: Runner) -> None:
        """Give the agent its inference side (before `start`)."""
        if self._started:
            raise RuntimeError("attach the runner before start()")
        self.runner = runner

    def start(self) -> None:
        s = self.settings
        try:
            s.state_dir.mkdir(parents=True, exist_ok=True)
            probe_file = s.state_dir / ".writable"
            probe_file.write_bytes(b"")
            probe_file.unlink()
        except OSError as exc:
            raise UserError(
                f"state_dir {s.state_dir} is not writable ({exc.strerror}): run as the lepton "
                "user or set state_dir"
            ) from None
        key_path = s.controller_key_path()
        try:
            public_key = read_public_key(key_path)
        except (OSError, SignatureError) as exc:
            raise UserError(f"controller key {key_path}: {exc}; re-enroll the device") from None
        if public_key is None:
            log.warning("no pinned controller key at %s: deploys will be refused", key_path)
        self.outbox = Outbox(s.state_dir, s.outbox.max_messages)
        self.command_log = CommandLog(s.state_dir)
        self.store = ArtifactStore(s.state_dir, public_key, s.store, key_hint=f" at {key_path}")
        self.active = self.store.recover()
        if self.active is not None:
            self._activate_runner(self.active, at_start=True)
        self.link = MqttLink(
            self.device_id,
            s.mqtt,
            self.outbox,
            birth=self._birth,
            offline=self._offline,
            on_command=self._receive_command,
            on_connected=self._on_connected,
        )
        self._started = True
        self.link.start()
        for target, name in ((self._main_loop, "main"), (self._command_loop, "commands")):
            thread = threading.Thread(target=target, name=f"{name}-{self.device_id}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.active is not None:
            self.mark_ready(f"serving bundle {self.active.bundle_id} from the store")

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Clean shutdown: last telemetry queued and flushed, `offline` published by us."""
        if not self._started:
            return
        self.notifier.stopping()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        with contextlib.suppress(queue.Full):
            self._commands.put_nowait(None)
        self._send_telemetry()
        self.link.stop(flush_timeout)
        if self.runner is not None:
            try:
                self.runner.close()
            except Exception:
                log.exception("runner close failed")
        self.outbox.close()
        self.command_log.close()
        self._started = False

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    # -- state, telemetry, events -----------------------------------------------------------

    def _state(self, status: Literal["online", "offline"]) -> State:
        runner = self.runner
        with self._lock:
            active = self.active.bundle_id if self.active else None
        return State(
            device_id=self.device_id,
            ts=self.clock(),
            status=status,
            hardware=self.profile if status == "online" else None,
            agent_version=__version__,
            active_bundle=active,
            active_variant=runner.active_variant() if runner and status == "online" else None,
            power_level=runner.power_level() if runner and status == "online" else None,
        )

    def _birth(self) -> bytes:
        return encode(self._state("online"))

    def _offline(self) -> bytes:
        return encode(self._state("offline"))

    def sample(self) -> Telemetry:
        """One telemetry message's content (seq filled in by `_send_telemetry`)."""
        p = self.probes
        battery = _safe(p.battery)
        thermal = _safe(p.thermal)
        runner = self.runner
        stats = None
        if runner is not None:
            try:
                runner.update_power(battery, thermal)
                stats = runner.stats()
            except Exception:
                log.exception("runner failed to report")
        with self._lock:
            active = self.active.bundle_id if self.active else None
        return Telemetry(
            device_id=self.device_id,
            ts=self.clock(),
            seq=0,
            cpu=p.cpu.sample(),
            memory=p.memory.sample(),
            gpu=_safe(p.gpu),
            battery=battery,
            thermal=thermal,
            inference=stats,
            power_level=runner.power_level() if runner else None,
            active_bundle=active,
            active_variant=runner.active_variant() if runner else None,
        )

    def _send_telemetry(self) -> int:
        sample = self.sample()
        dropped = self.outbox.dropped
        return self.outbox.append(
            Kind.TELEMETRY.value,
            lambda seq: encode(sample.model_copy(update={"seq": seq, "dropped": dropped})),
        )

    def emit_event(
        self,
        kind: EventKind,
        reason: str,
        data: dict[str, Any] | None = None,
        command_id: str | None = None,
    ) -> None:
        """Queue an event (QoS 1, in order, kept through outages); safe from any thread."""
        log.info("event %s: %s", kind.value, reason)

        def make(seq: int) -> bytes:
            event = Event(
                device_id=self.device_id,
                ts=self.clock(),
                seq=seq,
                kind=kind,
                reason=reason,
                command_id=command_id,
                data=data or {},
            )
            return encode(event)

        self.outbox.append(Kind.EVENT.value, make)

    def reply(
        self,
        command_id: str,
        status: Literal["accepted", "done", "failed", "rejected", "duplicate"],
        detail: str = "",
        result: dict[str, Any] | None = None,
    ) -> None:
        message = Reply(
            device_id=self.device_id,
            ts=self.clock(),
            command_id=command_id,
            status=status,
            detail=detail,
            result=result or {},
        )
        self.outbox.append(Kind.REPLY.value, lambda _seq: encode(message))

    def _runner_cpu_seconds(self) -> float:
        runner = self.runner
        if runner is None:
            return 0.0
        try:
            return float(runner.cpu_seconds())
        except Exception:
            return 0.0

    # -- main loop ----------------------------------------------------------------------

    def _main_loop(self) -> None:
        interval = self.settings.telemetry_interval_s
        watchdog = self.notifier.watchdog_interval_s
        next_sample = time.monotonic()
        next_ping = time.monotonic()
        reported_error: str | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sample:
                try:
                    self._send_telemetry()
                except Exception:
                    log.exception("telemetry sample failed")
                next_sample += interval
                if next_sample < now:  # fell behind (suspend, overload): do not burst
                    next_sample = now + interval
            if watchdog is not None and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + watchdog
            error = self.link.last_error
            if error != reported_error:
                reported_error = error
                if error is not None:
                    self.notifier.status(f"{error}; {len(self.outbox)} message(s) queued")
            wake = next_sample if watchdog is None else min(next_sample, next_ping)
            self._stop.wait(max(0.0, wake - time.monotonic()))

    def _on_connected(self) -> None:
        self.mark_ready(f"connected to {self.settings.mqtt.host}:{self.settings.mqtt.port}")

    def mark_ready(self, status: str) -> None:
        if not self.ready.is_set():
            self.ready.set()
            self.notifier.ready(status)
        else:
            self.notifier.status(status)

    # -- commands -----------------------------------------------------------------------

    def _receive_command(self, payload: bytes) -> None:
        """On the link thread: only queue; the command thread does the work."""
        try:
            self._commands.put_nowait(payload)
        except queue.Full:
            self.rejected_commands += 1
            self.emit_event(EventKind.ERROR, "command queue full: command dropped")

    def _command_loop(self) -> None:
        while not self._stop.is_set():
            try:
                payload = self._commands.get(timeout=0.5)
            except queue.Empty:
                continue
            if payload is None:
                break
            try:
                self.handle_command(payload)
            except Exception as exc:
                log.exception("command failed")
                self.emit_event(EventKind.ERROR, f"command handler crashed: {exc}")

    def handle_command(self, payload: bytes) -> None:
        """Decode, deduplicate by command id and dispatch by type."""
        try:
            command = decode(Kind.CMD, payload)
        except MessageError as exc:
            self._reject(payload, exc)
            return
        if not self.command_log.begin(command.command_id):
            self.reply(command.command_id, "duplicate", "command id already handled")
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
            self.command_log.finish(command.command_id)

    def _reject(self, payload: bytes, exc: MessageError) -> None:
        self.rejected_commands += 1
        command_id, reason = _explain_bad_command(payload, exc)
        label = f"command {command_id}" if command_id else "command"
        self.emit_event(
            EventKind.ERROR,
            f"rejected {label}: {reason}",
            {"bytes": len(payload), "field": exc.field},
            command_id=command_id,
        )
        if command_id:
            self.reply(command_id, "rejected", reason)

    def _deploy(self, cmd: Deploy) -> None:
        data = {"bundle_id": cmd.bundle_id, "rollout_id": cmd.rollout_id}
        self.reply(cmd.command_id, "accepted")
        self.emit_event(
            EventKind.DEPLOY,
            f"downloading bundle {cmd.bundle_id}",
            {**data, "stage": "downloading"},
            cmd.command_id,
        )
        try:
            bundle = self.store.fetch(
                cmd.bundle_id,
                cmd.manifest_url,
                cmd.artifact_base_url,
                list(cmd.ladder.values()),
                dict(cmd.ladder),
            )
        except (StoreError, OSError) as exc:
            self._deploy_failed(cmd, data, str(exc))
            return
        self.emit_event(
            EventKind.DEPLOY,
            f"bundle {cmd.bundle_id} verified (signature and sha256 of every file)",
            {**data, "stage": "verified"},
            cmd.command_id,
        )
        refused = self._activate_runner(bundle)
        if refused:
            self.store.gc()
            self._deploy_failed(cmd, data, refused)
            return
        self.store.activate(bundle)
        with self._lock:
            self.active = bundle
        self.link.republish_state()
        self.emit_event(
            EventKind.DEPLOY,
            f"bundle {cmd.bundle_id} activated",
            {**data, "stage": "activated"},
            cmd.command_id,
        )
        self.reply(cmd.command_id, "done", f"bundle {cmd.bundle_id} active")
        self.notifier.status(f"serving bundle {cmd.bundle_id}")

    def _deploy_failed(self, cmd: Deploy, data: dict[str, Any], reason: str) -> None:
        current = self.active.bundle_id if self.active else "none"
        self.emit_event(
            EventKind.DEPLOY,
            f"deploy of {cmd.bundle_id} failed: {reason}; still serving {current}",
            {**data, "stage": "failed"},
            cmd.command_id,
        )
        self.reply(cmd.command_id, "failed", reason)

    def _activate_runner(self, bundle: Bundle, at_start: bool = False) -> str | None:
        """Hand `bundle` to the runner; the reason it refused, or None if it took it."""
        if self.runner is None:
            return None
        try:
            self.runner.activate(bundle.dir, bundle.manifest, bundle.ladder)
        except Exception as exc:
            log.warning("runner refused bundle %s: %s", bundle.bundle_id, exc)
            reason = f"the engine refused bundle {bundle.bundle_id}: {exc}"
            if at_start:
                self.emit_event(EventKind.ERROR, f"at start, {reason}")
            return reason
        return None

    def _rollback(self, cmd: Rollback) -> None:
        before = self.active.bundle_id if self.active else None
        try:
            bundle = self.store.rollback()
        except StoreError as exc:
            self.reply(cmd.command_id, "failed", str(exc))
            self.emit_event(EventKind.ROLLBACK, f"rollback failed: {exc}", {}, cmd.command_id)
            return
        refused = self._activate_runner(bundle)
        if refused:
            self.store.rollback()  # put the one that works back
            self.reply(cmd.command_id, "failed", refused)
            return
        with self._lock:
            self.active = bundle
        self.link.republish_state()
        reason = f"rolled back from {before} to {bundle.bundle_id}"
        if cmd.reason:
            reason += f": {cmd.reason}"
        self.emit_event(
            EventKind.ROLLBACK,
            reason,
            {"from_bundle": before, "to_bundle": bundle.bundle_id, "rollout_id": cmd.rollout_id},
            cmd.command_id,
        )
        self.reply(cmd.command_id, "done", reason)

    def _benchmark(self, cmd: Benchmark) -> None:
        if self.runner is None:
            self.reply(cmd.command_id, "failed", "this agent runs no inference engine")
            return
        self.reply(cmd.command_id, "accepted")
        try:
            bundle = self.store.fetch(
                cmd.bundle_id, cmd.manifest_url, cmd.artifact_base_url, cmd.variant_ids
            )
        except (StoreError, OSError) as exc:
            self.reply(cmd.command_id, "failed", str(exc))
            self.emit_event(EventKind.BENCHMARK, f"benchmark failed: {exc}", {}, cmd.command_id)
            return
        try:
            timings = self.runner.benchmark(
                bundle.dir, bundle.manifest, cmd.variant_ids, cmd.iterations
            )
            result = BenchmarkResult(
                hardware_class=self.profile.hardware_class(),
                bundle_id=cmd.bundle_id,
                timings={k: VariantTiming.model_validate(v) for k, v in timings.items()},
            )
        except Exception as exc:
            log.exception("benchmark failed")
            self.reply(cmd.command_id, "failed", f"benchmark failed: {exc}")
            return
        finally:
            self.store.gc()
        self.emit_event(
            EventKind.BENCHMARK,
            f"benchmarked {len(result.timings)} variant(s) of {cmd.bundle_id}",
            {"bundle_id": cmd.bundle_id},
            cmd.command_id,
        )
        self.reply(cmd.command_id, "done", result=result.model_dump(mode="json"))

    def _set_policy(self, cmd: SetPolicy) -> None:
        if self.runner is None:
            self.reply(cmd.command_id, "failed", "this agent runs no inference engine")
            return
        try:
            self.runner.set_policy(cmd)
        except Exception as exc:
            self.reply(cmd.command_id, "failed", str(exc))
            return
        self.emit_event(
            EventKind.POLICY,
            f"policy set: override={cmd.override}, max_fps={cmd.max_fps}",
            {"override": cmd.override, "max_fps": cmd.max_fps},
            cmd.command_id,
        )
        self.reply(cmd.command_id, "done")


def _safe(probe: Any) -> Any:
    """A probe's sample, or None if it has none or it failed (logged)."""
    if probe is None:
        return None
    try:
        return probe.sample()
    except Exception:
        log.exception("%s probe failed", getattr(probe, "source", "?"))
        return None


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


def resolve_device_id(settings: AgentSettings) -> str:
    """The configured device id, or one derived from /etc/machine-id; a bad one is a UserError."""
    device_id = settings.device_id
    if device_id is None:
        try:
            device_id = machine_device_id()
        except OSError as exc:
            raise UserError(f"no device_id set and {exc}: set device_id in the config") from None
    try:
        return check_device_id(device_id)
    except TopicError as exc:
        raise UserError(str(exc)) from None


def build_agent(settings: AgentSettings, *, notifier: Notifier | None = None) -> Agent:
    """An agent for `settings`, with an inference runner when `engine.source` names frames.

    Without one (`source = "none"`) the agent still reports, deploys and rolls back.
    """
    agent = Agent(settings, notifier=notifier)
    if settings.engine.source == "none":
        return agent
    try:
        from lepton_edge.agent.runner import InferenceRunner
    except ImportError as exc:
        raise UserError(
            f"engine.source = {settings.engine.source} needs the Python package {exc.name!r}: "
            "pip install 'lepton-edge[agent,onnx]' (or [agent,litert])"
        ) from None
    agent.attach_runner(InferenceRunner.from_settings(settings, agent.emit_event, agent.profile))
    return agent


# -- `lepton-agent run` ----------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help=f"TOML settings file (default {DEFAULT_CONFIG_FILE} when it exists)",
    )
    parser.add_argument("--device-id", help="override device_id")
    parser.add_argument("--state-dir", type=Path, help="override state_dir")
    parser.add_argument("--mqtt-host", help="override mqtt.host")
    parser.add_argument("--mqtt-port", type=int, help="override mqtt.port")
    parser.add_argument(
        "--telemetry-interval", type=float, help="override telemetry_interval_s (seconds)"
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.device_id:
        out["device_id"] = args.device_id
    if args.state_dir:
        out["state_dir"] = args.state_dir
    if args.telemetry_interval:
        out["telemetry_interval_s"] = args.telemetry_interval
    mqtt = {k: v for k, v in (("host", args.mqtt_host), ("port", args.mqtt_port)) if v is not None}
    if mqtt:
        out["mqtt"] = mqtt
    return out


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, _overrides(args))
    if settings.log_json:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(_JsonFormatter())
    agent = build_agent(settings, notifier=Notifier())
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    log.info("agent %s started (state in %s)", agent.device_id, settings.state_dir)
    # An offline box is still working (queueing telemetry): tell systemd after a while.
    offline_ready_at = time.monotonic() + OFFLINE_READY_AFTER_S
    while not stop.wait(0.2):
        if not agent.ready.is_set() and time.monotonic() > offline_ready_at:
            agent.mark_ready("running offline: broker unreachable, telemetry queued")
    agent.stop()
    return 0
