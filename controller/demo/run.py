"""The demo from start to end: start everything, watch the fleet, summarize, clean up.

Order of life: broker -> controller (in this process) -> agents (one process each) -> bundle
build and upload -> on-device benchmarks -> staged rollout -> watch -> summary -> agents,
controller, broker stopped -> temp dir removed. Whatever was started is stopped, in reverse
order, on every way out (end of --duration, Ctrl-C, SIGTERM, an error).
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.live import Live

from lepton_edge.controller.demo import bundle as demo_bundle
from lepton_edge.controller.demo import summary as demo_summary
from lepton_edge.controller.demo.broker import Broker, start_broker
from lepton_edge.controller.demo.client import (
    ApiError,
    ControllerClient,
    Snapshot,
    snapshot,
    wait_until,
)
from lepton_edge.controller.demo.fleet import DemoAgent, start_agent
from lepton_edge.controller.demo.processes import free_port, port_in_use, stop_all
from lepton_edge.controller.demo.profiles import CAMERA, CAMERA_ID, fleet
from lepton_edge.controller.demo.view import ViewState, render
from lepton_edge.shared.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    devices: int = 8
    duration: float = 60.0
    data_dir: Path | None = None  # None: synthetic frames, accuracy n/a
    http_port: int | None = None
    mqtt_port: int | None = None
    broker: str = "auto"
    summary_json: Path | None = None
    hold: bool = False
    live: bool | None = None  # None: a live view when stdout is a terminal
    setup_timeout: float = 240.0
    camera: bool = True  # one more device: a video through the shapes detector


#: What the demo brings together; each is checked before anything starts.
PARTS = {
    "controller API": ("lepton_edge.controller.app", "create_app"),
    "variant factory": ("lepton_edge.controller.factory", "build_bundle"),
    "agent service": ("lepton_edge.agent.service", "build_agent"),
    "inference engine": ("lepton_edge.agent.runner", "InferenceRunner"),
}


def missing_parts() -> list[str]:
    """Names of parts whose module or entry point is absent; reads source, imports nothing."""
    import ast
    import importlib.util

    missing = []
    for name, (module, attr) in PARTS.items():
        top, *rest = module.split(".")
        spec = importlib.util.find_spec(top)  # a top-level lookup does not import the package
        roots = list(spec.submodule_search_locations or []) if spec else []
        candidates = [Path(r, *rest).with_suffix(".py") for r in roots]
        candidates += [Path(r, *rest, "__init__.py") for r in roots]
        source = next((p for p in candidates if p.is_file()), None)
        if source is None:
            missing.append(name)
            continue
        tree = ast.parse(source.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        defined |= {
            alias.asname or alias.name
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom)
            for alias in n.names
        }
        if attr not in defined:
            missing.append(name)
    return missing


#: Cumulative percent of the fleet per wave: a canary quarter first, then everyone.
ROLLOUT_WAVES = [25.0, 100.0]
#: The camera's video: 10 s of moving shapes at 640x480, played in a loop.
CAMERA_FRAMES, CAMERA_SIZE = 300, (640, 480)


class _Interrupted(Exception):
    """Ctrl-C or SIGTERM, noticed by the main thread at a safe point."""


class Demo:
    def __init__(self, options: DemoOptions, console: Console | None = None) -> None:
        self.o = options
        if console is None:
            console = Console()
            if not console.is_terminal:  # logs and pipes: wide enough for the fleet table
                console = Console(width=150)
        self.console = console
        self.workdir: Path | None = None
        self.broker: Broker | None = None
        self.server: Any = None
        self.client: ControllerClient | None = None
        self.agents: list[DemoAgent] = []
        self.token = secrets.token_urlsafe(24)
        self.devices = fleet(options.devices)
        self.camera = (CAMERA_ID, CAMERA) if options.camera else None
        self.bundle_id: str | None = None
        self.rollout_id: str | None = None
        self.detector_id: str | None = None
        self.camera_rollout_id: str | None = None
        self.setup_error: BaseException | None = None
        self.fleet_live_at: float | None = None  # monotonic, once the rollout started
        self.view: ViewState | None = None
        self._setup_thread: threading.Thread | None = None
        self._build: demo_bundle.BuildProcess | None = None
        self.public_key: Path | None = None  # the controller's, pinned by every agent
        # The setup thread asks, the main thread starts the agents: a child dies with the
        # thread that started it (PR_SET_PDEATHSIG), and the setup thread ends early.
        self._agents_due = threading.Event()
        self._agents_started = threading.Event()
        # Signals only set this flag: an exception raised at an arbitrary point (inside a
        # fork hook, a lock release, an import) can be swallowed or leave things half-made.
        self._stop = threading.Event()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _checkpoint(self) -> None:
        if self._stop.is_set():
            raise _Interrupted()

    # --- the whole run -------------------------------------------------------------------

    def run(self) -> int:
        missing = missing_parts()
        if missing:
            raise UserError(f"the demo needs parts not in this tree yet: {', '.join(missing)}")
        if self.o.http_port is not None and port_in_use(self.o.http_port):
            raise UserError(
                f"HTTP port {self.o.http_port} is in use: pick another --http-port or leave it out"
            )
        old_handlers = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        self.workdir = Path(tempfile.mkdtemp(prefix="lepton-demo-"))
        watched = False
        try:
            self._start_services()
            watched = self._watch()
            # Stop the devices first so the summary's facts are final: no event or sample can
            # arrive between reading the summary and anyone checking it against the API.
            online = {
                d: r.online
                for d, r in (
                    self.view.snapshot.devices.items() if self.view and self.view.snapshot else []
                )
            }
            self._stop_agents()
            self._wait_quiet()
            summary = self._summary(online)
            self._print_summary(summary)
            if self.o.hold:
                self._hold()
            return 0
        except _Interrupted:
            if watched:
                return 0
            self.console.print("[yellow]interrupted: stopping everything the demo started[/]")
            return 130
        finally:
            try:
                self._shutdown()  # every step has a timeout; more Ctrl-C only set the flag
            finally:
                for sig, handler in old_handlers.items():
                    signal.signal(sig, handler)

    # --- start ---------------------------------------------------------------------------

    def _start_services(self) -> None:
        assert self.workdir is not None
        say = self.console.print
        self.broker = start_broker(
            self.workdir / "broker", port=self.o.mqtt_port, kind=self.o.broker
        )
        say(
            f"broker: {self.broker.kind} on {self.broker.host}:{self.broker.port} (MQTT {self.broker.mqtt_version})"
        )
        self._checkpoint()

        state_dir = self.workdir / "controller"
        self.public_key = demo_bundle.prepare_key(state_dir, self.workdir / "controller.pem")
        from lepton_edge.controller.demo.server import (
            ControllerServer,  # imports FastAPI: only when needed
        )

        settings = self._controller_settings(state_dir)
        self.server = ControllerServer(settings)
        self.server.start(cancelled=self._stop.is_set)
        self._checkpoint()
        self.client = ControllerClient(self.server.url, self.token)
        # The dashboard gets a read-only token; the admin token stays in this process.
        dashboard = f"{self.server.url}/ui/#token={self.client.read_token('demo dashboard')}"
        say(f"controller: {self.server.url} (SQLite in a temp dir)")
        say(f"[bold]dashboard: {dashboard}[/]")
        self.view = ViewState(
            dashboard_url=dashboard,
            broker=f"{self.broker.kind}:{self.broker.port}",
            profiles={d: p for d, p in self._all_devices()},
        )

        # The slow part (bundle build, benchmarks, rollout) runs beside the live view.
        self._setup_thread = threading.Thread(
            target=self._setup_fleet, name="demo-setup", daemon=True
        )
        self._setup_thread.start()

    def _start_agents(self) -> None:
        """One process per device. Started once the bundles are built, so the simulated
        batteries (which drain from the agent's start) still cross their thresholds after the
        rollout, however long the build took on this machine."""
        assert self.workdir is not None and self.broker is not None
        public_key = self.public_key
        assert public_key is not None
        for device_id, profile in self.devices:
            self._checkpoint()
            self.agents.append(
                start_agent(
                    device_id,
                    profile,
                    self.workdir / "devices",
                    broker=self.broker,
                    controller_key_file=public_key,
                    data_dir=self.o.data_dir,
                )
            )
        if self.camera is not None:
            self._checkpoint()
            self.agents.append(
                start_agent(
                    *self.camera,
                    self.workdir / "devices",
                    broker=self.broker,
                    controller_key_file=public_key,
                    data_dir=None,
                    video=self._camera_video(),
                )
            )
        self.console.print(
            f"agents: {len(self.agents)} processes started ({', '.join(a.device_id for a in self.agents)})"
        )

    def _all_devices(self) -> list[tuple[str, Any]]:
        return [*self.devices, *([self.camera] if self.camera else [])]

    def _camera_video(self) -> Path:
        """The camera's video, rendered and encoded here (moving shapes the detector knows)."""
        from lepton_edge.controller.demo.shapes import scene
        from lepton_edge.controller.demo.video import write_video

        assert self.workdir is not None
        frames = (f for f, _ in scene(CAMERA_FRAMES, *CAMERA_SIZE, seed=11))
        return write_video(self.workdir / "camera.mp4", frames)

    def _controller_settings(self, state_dir: Path) -> Any:
        from lepton_edge.controller.config import ControllerSettings

        assert self.broker is not None
        port = self.o.http_port or free_port()
        return ControllerSettings.model_validate(
            dict(
                state_dir=state_dir,
                http_host="127.0.0.1",
                http_port=port,
                bootstrap_admin_token=self.token,
                auth_required=True,
                mqtt={
                    "host": self.broker.host,
                    "port": self.broker.port,
                    "username": None,
                    "protocol": self.broker.mqtt_version,  # 3.1.1 on the amqtt fallback
                },
                rollout={
                    "waves": ROLLOUT_WAVES,
                    "soak_s": 3.0,
                    "wave_timeout_s": 60.0,
                    "resend_after_s": 5.0,
                    "tick_s": 0.5,
                    "require_inferring": True,
                },
                ingest={"flush_interval_ms": 200},
            )
        )

    def _set_phase(self, phase: str) -> None:
        if self.view is not None:
            self.view.phase = phase

    def _remember_build(self, build: demo_bundle.BuildProcess) -> None:
        self._build = build
        if self._stop.is_set():  # Ctrl-C came while it was starting
            build.stop()

    def _setup_fleet(self) -> None:
        """Build the bundle, wait for the fleet, benchmark on the devices, start the rollout."""
        assert self.client is not None and self.view is not None and self.workdir is not None
        client, view = self.client, self.view
        try:
            view.phase = "building the Fashion-MNIST bundle (variant factory)"
            self.bundle_id = demo_bundle.build_and_upload(
                client,
                self.workdir,
                self.o.data_dir,
                view.notes,
                progress=self._set_phase,
                started=self._remember_build,
            )
            if self.camera is not None:
                view.phase = "building the shapes detector bundle (variant factory)"
                self.detector_id = demo_bundle.build_and_upload(
                    client,
                    self.workdir,
                    None,
                    view.notes,
                    progress=self._set_phase,
                    started=self._remember_build,
                    detector=True,
                )
            view.phase = "starting the devices"
            self._agents_due.set()
            while not self._agents_started.wait(0.2):
                self._checkpoint()
            everyone = self._all_devices()
            view.phase = "waiting for every device to come online"
            wait_until(
                lambda: sum(1 for d in client.devices() if d.get("online")) >= len(everyone),
                60,
                f"{len(everyone)} devices to come online",
            )
            for device_id, profile in everyone:  # so the dashboard's tag filter has work
                client.put(f"/devices/{device_id}/tags", json={"tags": list(profile.tags)})
            view.phase = "benchmarking every variant on every device"
            classes = demo_bundle.benchmark(client, self.bundle_id)
            if self.detector_id is not None:
                demo_bundle.benchmark(client, self.detector_id)
            view.notes.append(f"benchmarks: every variant timed on {classes} hardware classes")
            view.phase = "staged rollout"
            fleet_ids = [d for d, _ in self.devices]
            self.rollout_id = demo_bundle.start_rollout(
                client, self.bundle_id, ROLLOUT_WAVES, fleet_ids
            )
            if self.detector_id is not None:
                self.camera_rollout_id = demo_bundle.start_rollout(
                    client, self.detector_id, [100.0], [CAMERA_ID]
                )
            self.fleet_live_at = time.monotonic()
            view.deadline = self.fleet_live_at + self.o.duration
            view.phase = "running: batteries drain, precision steps down"
        except BaseException as exc:  # reported by the main thread
            self.setup_error = exc

    # --- watch ---------------------------------------------------------------------------

    def _poll(self) -> Snapshot | None:
        assert self.client is not None
        try:
            return snapshot(self.client, self.rollout_id)
        except (ApiError, OSError) as exc:
            log.debug("poll failed: %s", exc)
            return None
        except Exception as exc:  # httpx errors and the like: keep watching
            log.debug("poll failed: %s", exc)
            return None

    def _watch(self) -> bool:
        """Show the fleet until the duration is over; True when it ran to its end."""
        assert self.view is not None
        live = self.o.live if self.o.live is not None else self.console.is_terminal
        setup_deadline = time.monotonic() + self.o.setup_timeout
        last_print = 0.0
        seen_switches: set[Any] = set()
        last_phase = ""
        notes_printed = 0
        ctx = (
            Live(
                render(self.view, width=self.console.width),
                console=self.console,
                refresh_per_second=2,
            )
            if live
            else None
        )
        try:
            if ctx is not None:
                ctx.__enter__()
            while True:
                if self._stop.is_set():
                    if self.view.deadline is None:
                        raise _Interrupted()
                    return True  # Ctrl-C once the fleet runs: end early, with the summary
                if self._agents_due.is_set() and not self._agents_started.is_set():
                    self._start_agents()
                    self._agents_started.set()
                self._check_children()
                if self.setup_error is not None:
                    raise self.setup_error
                if self.view.deadline is None and time.monotonic() > setup_deadline:
                    raise UserError(
                        f"the fleet was not running after {self.o.setup_timeout:.0f} s of setup"
                    )
                snap = self._poll()
                if snap is not None:
                    self.view.update(snap)
                if ctx is not None:
                    ctx.update(render(self.view, width=self.console.width))
                else:
                    if self.view.phase != last_phase:
                        last_phase = self.view.phase
                        self.console.print(f"phase: {last_phase}")
                    for e in snap.switches if snap else []:
                        key = (e.get("device_id"), e.get("ts"), e.get("seq"))
                        if key not in seen_switches:
                            seen_switches.add(key)
                            d = e.get("data") or {}
                            self.console.print(
                                f"switch: {e.get('device_id')} {d.get('from_variant')} -> "
                                f"{d.get('to_variant')} ({e.get('reason')})"
                            )
                    for note in self.view.notes[notes_printed:]:
                        self.console.print(note)
                    notes_printed = len(self.view.notes)
                    if time.monotonic() - last_print > 15:
                        last_print = time.monotonic()
                        self.console.print(render(self.view, live=False, width=self.console.width))
                if self.view.deadline is not None and time.monotonic() >= self.view.deadline:
                    return True
                self._stop.wait(1.0)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)

    def _check_children(self) -> None:
        if self.broker is not None and not self.broker.child.alive():
            raise UserError(f"the broker stopped unexpectedly: {self.broker.child.log_tail(300)}")
        dead = [a for a in self.agents if not a.child.alive()]
        if dead:
            a = dead[0]
            last = a.child.log_tail(600).strip().splitlines()[-3:]
            raise UserError(
                f"agent {a.device_id} exited ({a.child.proc.returncode}): {' | '.join(last)}"
            )

    # --- end -----------------------------------------------------------------------------

    def _wait_quiet(self, timeout: float = 10.0) -> None:
        """Until the controller has ingested the stopped devices' last words: every device
        offline, or nothing changed across two polls more than an ingest flush apart."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        previous: Any = None
        while time.monotonic() < deadline:
            try:
                devices = self.client.devices()
            except Exception as exc:  # keep trying until the deadline
                log.debug("waiting for the last telemetry: %s", exc)
                devices = []
            if devices and not any(d.get("online") for d in devices):
                return
            current = sorted((d["id"], d["last_seen"], d["telemetry_count"]) for d in devices)
            if devices and current == previous:
                return
            previous = current
            time.sleep(1.0)

    def _summary(self, online: dict[str, bool]) -> dict[str, Any]:
        assert self.client is not None
        return demo_summary.collect(
            self.client,
            self.bundle_id,
            self.rollout_id,
            dict(self.devices),
            self.fleet_live_at,
            online_at_end=online,
            camera=(CAMERA_ID, CAMERA, self.detector_id, self.camera_rollout_id)
            if self.camera is not None
            else None,
        )

    def _print_summary(self, summary: dict[str, Any]) -> None:
        demo_summary.print_summary(self.console, summary)
        if self.o.summary_json is not None:
            tmp = self.o.summary_json.with_suffix(".tmp")
            tmp.write_text(json.dumps(summary, indent=2))
            tmp.replace(self.o.summary_json)  # readers never see half a file

    def _hold(self) -> None:
        assert self.server is not None
        self.console.print(
            f"[bold]holding[/]: dashboard and API stay at {self.server.url}/ui/ until Ctrl-C"
        )
        self._stop.clear()  # a Ctrl-C that ended the watch must not end the hold too
        self._stop.wait()

    def _stop_agents(self) -> None:
        stop_all([a.child for a in self.agents], timeout=8.0)

    def _join_setup(self) -> None:
        """Stop a bundle build in progress and let the setup thread end, so nothing writes
        into the temp dir after it is removed."""
        if self._build is not None:
            self._build.stop()
        thread = self._setup_thread
        if thread is not None and thread.is_alive():
            thread.join(30)

    def _shutdown(self) -> None:
        steps: tuple[tuple[str, Callable[[], object]], ...] = (
            ("agents", self._stop_agents),
            # A closed client makes the setup thread's next request fail, so it ends.
            ("api client", lambda: self.client.close() if self.client else None),
            ("controller", lambda: self.server.stop() if self.server else None),
            ("setup", self._join_setup),
            ("broker", lambda: self.broker.stop() if self.broker else None),
        )
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # keep going: the next things must stop too
                log.warning("stopping the %s failed: %s", name, exc)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
