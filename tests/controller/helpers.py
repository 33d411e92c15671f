"""Test helpers: small signed bundles and a simulated agent speaking the shared contract.

The simulated agent is a real paho client (MQTT v5) that fetches manifests and artifacts over
real HTTP, verifies signature and sha256, and reports health through telemetry.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from lepton_edge.shared import messages, topics
from lepton_edge.shared.hardware import HardwareProfile
from lepton_edge.shared.manifest import (
    MANIFEST_FILE,
    Manifest,
    ModelFormat,
    Precision,
    Requirements,
    Variant,
    VariantMetrics,
)
from lepton_edge.shared.messages import (
    Benchmark,
    BenchmarkResult,
    CpuSample,
    Deploy,
    InferenceStats,
    MemorySample,
    Reply,
    Rollback,
    State,
    Telemetry,
    VariantTiming,
)
from lepton_edge.shared.signing import load_public_key, sign_manifest, verify_manifest
from lepton_edge.shared.topics import Kind

# (id, format, precision, accuracy, build-host p50 ms, size, cpu features)
DEFAULT_VARIANTS = [
    ("onnx-fp32", "onnx", "fp32", 0.900, 0.050, 4000, []),
    ("onnx-fp16", "onnx", "fp16", 0.899, 0.060, 2000, ["fp16"]),
    ("onnx-int8-static", "onnx", "int8", 0.898, 0.048, 1000, []),
    ("tflite-fp32", "tflite", "fp32", 0.900, 0.040, 4000, []),
    ("tflite-int8-static", "tflite", "int8", 0.897, 0.030, 1000, []),
]


def make_bundle(
    out: Path,
    key: Ed25519PrivateKey,
    bundle_id: str = "fmnist-1",
    variants: list[tuple[Any, ...]] | None = None,
    size_scale: int = 1,
) -> Manifest:
    """A signed bundle whose variant files are random bytes (the controller never runs them)."""
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for vid, fmt, prec, acc, p50, size, feats in variants or DEFAULT_VARIANTS:
        data = (vid.encode() + uuid.uuid4().bytes) * ((size * size_scale) // 20 + 1)
        data = data[: size * size_scale]
        sha = hashlib.sha256(data).hexdigest()
        (out / f"{sha}.{fmt}").write_bytes(data)
        entries.append(
            Variant(
                id=vid,
                format=ModelFormat(fmt),
                precision=Precision(prec),
                scheme="test",
                sha256=sha,
                size_bytes=len(data),
                metrics=VariantMetrics(
                    accuracy=acc, accuracy_delta=(acc - 0.900) * 100, latency_p50_ms=p50
                ),
                requirements=Requirements(
                    runtime="onnxruntime" if fmt == "onnx" else "litert", cpu_features=feats
                ),
            )
        )
    manifest = Manifest(
        bundle_id=bundle_id,
        model_name="fmnist",
        version=bundle_id.rsplit("-", 1)[-1],
        created_at=time.time(),
        num_classes=10,
        variants=entries,
    )
    manifest = sign_manifest(manifest, key)
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return manifest


def profile(
    cpu_model: str = "Test CPU",
    features: list[str] | None = None,
    runtimes: dict[str, str] | None = None,
    memory_mb: int = 4096,
    arch: str = "x86_64",
) -> HardwareProfile:
    return HardwareProfile(
        arch=arch,
        cpu_model=cpu_model,
        cores=4,
        features=features if features is not None else ["avx2", "fp16"],
        memory_mb=memory_mb,
        runtimes=runtimes if runtimes is not None else {"onnxruntime": "1.20", "litert": "1.2"},
    )


class SimAgent:
    """A lightweight simulated device. `mode`: healthy | fail_deploy | errors | silent."""

    def __init__(
        self,
        device_id: str,
        port: int,
        public_key_pem: bytes | None = None,
        hw: HardwareProfile | None = None,
        mode: str = "healthy",
        inferring: bool = True,
        telemetry_interval: float = 0.2,
        active_bundle: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.device_id = device_id
        self.port = port
        self.public_key = load_public_key(public_key_pem) if public_key_pem else None
        self.hw = hw or profile()
        self.mode = mode
        self.inferring = inferring
        self.interval = telemetry_interval
        self.active_bundle = active_bundle
        self.active_variant: str | None = None
        self.previous: list[tuple[str | None, str | None]] = []
        self.seen: set[str] = set()
        self.final_replies: dict[str, bytes] = {}
        self.installs: Counter[str] = Counter()
        self.deploy_commands: list[str] = []
        self.rollbacks = 0
        self.downloaded_bytes = 0
        self.timings = timings or {}
        self.seq = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.http = httpx.Client(timeout=10)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sim-{device_id}", protocol=mqtt.MQTTv5
        )
        if username:
            self.client.username_pw_set(username, password)
        will = State(device_id=device_id, ts=time.time(), status="offline")
        self.client.will_set(topics.topic(device_id, Kind.STATE), messages.encode(will), 1, True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.connected = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SimAgent:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError(f"{self.device_id} could not connect")
        self._stop.clear()
        self._thread = threading.Thread(target=self._telemetry_loop, daemon=True)
        self._thread.start()
        return self

    def stop(self, clean: bool = True) -> None:
        """`clean=False` drops the connection without a goodbye, so the broker sends the will."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if clean:
            self.publish_state("offline")
            self.client.disconnect()
            self.client.loop_stop()
        else:
            self.client.loop_stop()
            sock = self.client.socket()
            if sock is not None:
                sock.close()
        self.http.close()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(topics.topic(self.device_id, Kind.CMD), qos=1)
        self.publish_state("online", wait=False)  # never block the network thread
        self.connected.set()

    # --- publishing ---------------------------------------------------------------------------

    def publish_state(self, status: str, wait: bool = True) -> None:
        state = State(
            device_id=self.device_id,
            ts=time.time(),
            status=status,  # type: ignore[arg-type]
            hardware=self.hw if status == "online" else None,
            agent_version="sim",
            active_bundle=self.active_bundle if status == "online" else None,
            active_variant=self.active_variant if status == "online" else None,
        )
        info = self.client.publish(
            topics.topic(self.device_id, Kind.STATE), messages.encode(state), 1, retain=True
        )
        if wait:
            info.wait_for_publish(5)

    def telemetry(self) -> Telemetry:
        inference = None
        if self.inferring and self.active_bundle:
            errors = 5 if self.mode == "errors" else 0
            inference = InferenceStats(
                variant=self.active_variant, frames=20, fps=100, latency_p99_ms=1.0, errors=errors
            )
        with self.lock:
            seq = self.seq
            self.seq += 1
        return Telemetry(
            device_id=self.device_id,
            ts=time.time(),
            seq=seq,
            cpu=CpuSample(percent=10),
            memory=MemorySample(used_mb=100, available_mb=1000, percent=10),
            inference=inference,
            active_bundle=self.active_bundle,
            active_variant=self.active_variant,
        )

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.client.publish(
                topics.topic(self.device_id, Kind.TELEMETRY), messages.encode(self.telemetry()), 1
            )

    def reply(
        self, command_id: str, status: str, detail: str = "", result: dict[str, Any] | None = None
    ) -> None:
        msg = Reply(
            device_id=self.device_id,
            ts=time.time(),
            command_id=command_id,
            status=status,  # type: ignore[arg-type]
            detail=detail,
            result=result or {},
        )
        payload = messages.encode(msg)
        if status in messages.FINAL_REPLIES:
            self.final_replies[command_id] = payload  # sent again if the command comes again
        self.client.publish(topics.topic(self.device_id, Kind.REPLY), payload, 1)

    # --- commands -----------------------------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        command = messages.decode(Kind.CMD, msg.payload)
        cid = command.command_id  # type: ignore[union-attr]
        if cid in self.seen:  # as the real agent: the final reply again, if there is one
            final = self.final_replies.get(cid)
            if final is None:
                self.reply(cid, "duplicate")
            else:
                self.client.publish(topics.topic(self.device_id, Kind.REPLY), final, 1)
            return
        self.seen.add(cid)
        if self.mode == "silent":
            return
        threading.Thread(target=self._handle, args=(command,), daemon=True).start()

    def _handle(self, command: Any) -> None:
        try:
            if isinstance(command, Deploy):
                self._deploy(command)
            elif isinstance(command, Rollback):
                if command.from_bundle is not None and command.from_bundle != self.active_bundle:
                    self.reply(command.command_id, "rejected", "nothing to undo")
                    return
                self.rollbacks += 1
                if self.previous:
                    self.active_bundle, self.active_variant = self.previous.pop()
                self.publish_state("online")
                self.reply(command.command_id, "done", "rolled back")
            elif isinstance(command, Benchmark):
                timings = {
                    v: VariantTiming(
                        p50_ms=self.timings.get(v, 1.0), p99_ms=self.timings.get(v, 1.0) * 1.2
                    )
                    for v in command.variant_ids
                }
                result = BenchmarkResult(
                    hardware_class=self.hw.hardware_class(),
                    bundle_id=command.bundle_id,
                    timings=timings,
                )
                self.reply(command.command_id, "done", result=result.model_dump(mode="json"))
        except Exception as exc:  # a test agent reports, never dies
            self.reply(command.command_id, "failed", f"{type(exc).__name__}: {exc}")

    def _deploy(self, cmd: Deploy) -> None:
        self.deploy_commands.append(cmd.command_id)
        self.reply(cmd.command_id, "accepted")
        if self.mode == "fail_deploy":
            self.reply(cmd.command_id, "failed", "simulated install failure")
            return
        grant = {"Authorization": f"Bearer {cmd.download_token}"} if cmd.download_token else {}
        manifest = Manifest.model_validate_json(
            self.http.get(cmd.manifest_url, headers=grant).raise_for_status().content
        )
        if self.public_key is not None:
            verify_manifest(manifest, self.public_key)
        for vid in sorted(set(cmd.ladder.values())):
            variant = manifest.variant(vid)
            data = (
                self.http.get(f"{cmd.artifact_base_url}/{variant.sha256}", headers=grant)
                .raise_for_status()
                .content
            )
            if hashlib.sha256(data).hexdigest() != variant.sha256:
                raise ValueError(f"{vid}: sha256 mismatch")
            self.downloaded_bytes += len(data)
        self.previous.append((self.active_bundle, self.active_variant))
        self.active_bundle = cmd.bundle_id
        self.active_variant = cmd.ladder[messages.PowerLevel.PERFORMANCE]
        self.installs[cmd.bundle_id] += 1
        self.publish_state("online")
        self.reply(cmd.command_id, "done", f"activated {cmd.bundle_id}")


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
