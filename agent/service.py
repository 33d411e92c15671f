"""The agent service: one `Agent` per device owning its link, outbox, store and probes.

`lepton-agent run` builds one from settings and runs it under systemd (Type=notify).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from lepton_edge.agent.config import AgentSettings
from lepton_edge.agent.handlers import CommandHandlers
from lepton_edge.agent.hardware import build_profile, machine_device_id
from lepton_edge.agent.link import MqttLink
from lepton_edge.agent.outbox import CommandLog, Outbox
from lepton_edge.agent.probes import build_probes
from lepton_edge.agent.results import ResultPublisher
from lepton_edge.agent.store import ArtifactStore, Bundle, read_public_key
from lepton_edge.shared import __version__
from lepton_edge.shared.errors import SignatureError, TopicError, UserError
from lepton_edge.shared.hardware import HardwareProfile
from lepton_edge.shared.manifest import Manifest
from lepton_edge.shared.messages import (
    FINAL_REPLIES,
    BatterySample,
    Event,
    EventKind,
    InferenceStats,
    PowerLevel,
    Reply,
    SetPolicy,
    State,
    Telemetry,
    ThermalSample,
    encode,
)
from lepton_edge.shared.systemd import Notifier
from lepton_edge.shared.topics import Kind, check_device_id

if TYPE_CHECKING:
    from lepton_edge.agent.metrics import TelemetryCollector

log = logging.getLogger(__name__)

COMMAND_QUEUE = 100

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
        self.lock = threading.Lock()  # active bundle vs. state messages
        self.handlers = CommandHandlers(self)
        self._started = False
        #: publishes the runner's results on …/result (set by `build_agent`)
        self.results: ResultPublisher | None = None
        self.metrics: TelemetryCollector | None = None
        self._metrics_server: Any = None

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
        if s.metrics_port is not None:
            from lepton_edge.agent import metrics

            self.metrics = metrics.TelemetryCollector(self.device_id)
            try:
                self._metrics_server = metrics.serve(self.metrics, s.metrics_host, s.metrics_port)
            except OSError as exc:
                raise UserError(
                    f"metrics_port {s.metrics_port} on {s.metrics_host}: {exc.strerror}; "
                    "choose a free port or unset metrics_port"
                ) from None
        self.outbox = Outbox(s.state_dir, s.outbox.max_messages)
        self.command_log = CommandLog(s.state_dir)
        self.store = ArtifactStore(s.state_dir, public_key, s.store, key_hint=f" at {key_path}")
        self.active = self.store.recover()
        if self.active is not None:
            self.activate_runner(self.active, at_start=True)
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
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self._started = False

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout)

    # -- state, telemetry, events -----------------------------------------------------------

    def _state(self, status: Literal["online", "offline"]) -> State:
        runner = self.runner
        with self.lock:
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
        if stats is not None and self.results is not None:
            counts = self.results.take_counts()
            stats.results_published = counts["published"]
            stats.results_suppressed = counts["suppressed"]
            stats.results_lost = counts["lost"]
        with self.lock:
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
        if self.metrics is not None:
            self.metrics.update(sample)
        dropped, epoch = self.outbox.dropped, self.outbox.epoch
        return self.outbox.append(
            Kind.TELEMETRY.value,
            lambda seq: encode(
                sample.model_copy(update={"seq": seq, "epoch": epoch, "dropped": dropped})
            ),
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
        payload = encode(
            Reply(
                device_id=self.device_id,
                ts=self.clock(),
                command_id=command_id,
                status=status,
                detail=detail,
                result=result or {},
            )
        )
        if status in FINAL_REPLIES:
            self.command_log.remember(command_id, payload)
        self.resend_reply(payload)

    def resend_reply(self, payload: bytes) -> None:
        """Queue a reply's bytes (QoS 1, through the outbox)."""
        self.outbox.append(Kind.REPLY.value, lambda _seq: payload)

    def publish_result(self, payload: bytes) -> bool:
        """QoS 0 on …/result, now or never (False while offline)."""
        return self._started and self.link.publish_live(Kind.RESULT, payload)

    def queue_result(self, make: Callable[[int], bytes]) -> None:
        """QoS 1 on …/result through the outbox: kept through outages, in order."""
        self.outbox.append(Kind.RESULT.value, make)

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
                self.handlers.handle(payload)
            except Exception as exc:
                log.exception("command failed")
                self.emit_event(EventKind.ERROR, f"command handler crashed: {exc}")

    def activate_runner(self, bundle: Bundle, at_start: bool = False) -> str | None:
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


def _safe(probe: Any) -> Any:
    """A probe's sample, or None if it has none or it failed (logged)."""
    if probe is None:
        return None
    try:
        return probe.sample()
    except Exception:
        log.exception("%s probe failed", getattr(probe, "source", "?"))
        return None


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
    if settings.results.enabled:
        agent.results = ResultPublisher(
            agent.device_id,
            settings.results,
            send=agent.publish_result,
            send_reliable=agent.queue_result,
        )
    runner = InferenceRunner.from_settings(
        settings, agent.emit_event, agent.profile, on_result=agent.results
    )
    agent.attach_runner(runner)
    return agent
