"""Helpers for the agent-core tests: signed bundles of any bytes, a real HTTP artifact server
with a Range log and injectable faults, an independent MQTT subscriber, agent processes."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lepton_edge.shared.manifest import Manifest, Requirements, Variant
from lepton_edge.shared.messages import PowerLevel
from lepton_edge.shared.signing import public_pem, sign_manifest

REPO = Path(__file__).resolve().parents[2]


def make_bundle(
    out_dir: Path,
    key: Ed25519PrivateKey,
    bundle_id: str,
    payloads: dict[str, bytes],
) -> Manifest:
    """A signed bundle whose variants are arbitrary bytes (the store checks hashes, not models)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = []
    for variant_id, data in payloads.items():
        sha = hashlib.sha256(data).hexdigest()
        (out_dir / f"{sha}.onnx").write_bytes(data)
        variants.append(
            Variant(
                id=variant_id,
                format="onnx",
                precision="fp32",
                scheme="test",
                sha256=sha,
                size_bytes=len(data),
                requirements=Requirements(runtime="onnxruntime"),
            )
        )
    manifest = Manifest(
        bundle_id=bundle_id,
        model_name="test",
        version="1",
        created_at=time.time(),
        num_classes=10,
        variants=variants,
    )
    signed = sign_manifest(manifest, key)
    (out_dir / "manifest.json").write_text(signed.model_dump_json())
    return signed


def ladder_for(manifest: Manifest) -> dict[PowerLevel, str]:
    ids = [v.id for v in manifest.variants]
    return {level: ids[min(i, len(ids) - 1)] for i, level in enumerate(PowerLevel)}


def write_key(path: Path, key: Ed25519PrivateKey) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(public_pem(key.public_key()))
    return path


@dataclass
class Faults:
    """What the server does wrong, per artifact sha256."""

    cut_after: dict[str, int] = field(default_factory=dict)  # close after N bytes, once
    stall: set[str] = field(default_factory=set)  # send headers and a little, then hang
    slow: dict[str, float] = field(default_factory=dict)  # seconds to sleep per 4 KiB chunk
    replace: dict[str, bytes] = field(default_factory=dict)  # serve these bytes instead


class ArtifactServer:
    """A real HTTP server: `/bundles/{id}/manifest.json` and `/artifacts/{sha256}` with Range.

    `log` records (path, Range header or None, status) of every request, so a test can prove a
    resumed download asked for the rest only.
    """

    def __init__(self) -> None:
        self.bundles: dict[str, Path] = {}
        self.files: dict[str, Path] = {}
        self.log: list[tuple[str, str | None, int]] = []
        self.faults = Faults()
        self._release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add_bundle(self, bundle_dir: Path) -> Manifest:
        manifest = Manifest.model_validate_json((bundle_dir / "manifest.json").read_bytes())
        self.bundles[manifest.bundle_id] = bundle_dir
        for v in manifest.variants:
            self.files[v.sha256] = bundle_dir / v.filename
        return manifest

    def manifest_url(self, bundle_id: str) -> str:
        return f"{self.url}/bundles/{bundle_id}/manifest.json"

    @property
    def artifact_base(self) -> str:
        return f"{self.url}/artifacts"

    def ranges(self, sha: str) -> list[str | None]:
        return [r for p, r, _ in self.log if p == f"/artifacts/{sha}"]

    def _serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        parts = h.path.strip("/").split("/")
        rng = h.headers.get("Range")
        data: bytes | None = None
        sha = ""
        if len(parts) == 3 and parts[0] == "bundles" and parts[1] in self.bundles:
            data = (self.bundles[parts[1]] / "manifest.json").read_bytes()
        elif len(parts) == 2 and parts[0] == "artifacts" and parts[1] in self.files:
            sha = parts[1]
            data = self.faults.replace.get(sha) or self.files[sha].read_bytes()
        if data is None:
            self.log.append((h.path, rng, 404))
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start = 0
        status = 200
        if rng and sha:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.log.append((h.path, rng, 416))
                h.send_response(416)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            status = 206
        self.log.append((h.path, rng, status))
        body = data[start:]
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", f'"{sha}"')
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if sha in self.faults.cut_after:
            n = self.faults.cut_after.pop(sha)
            h.wfile.write(body[:n])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if sha in self.faults.stall:
            h.wfile.write(body[:1024])
            h.wfile.flush()
            self._release.wait(60)
            h.close_connection = True
            return
        delay = self.faults.slow.get(sha, 0.0)
        for i in range(0, len(body), 4096):
            h.wfile.write(body[i : i + 4096])
            if delay:
                h.wfile.flush()
                time.sleep(delay)

    def __enter__(self) -> ArtifactServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Watcher:
    """An independent paho subscriber that records (topic, payload, retain) of what it sees."""

    def __init__(
        self, port: int, topic: str = "lepton/v1/#", client_id: str = "", persistent: bool = False
    ) -> None:
        """`persistent`: a session the broker keeps (and queues for) while we are away."""
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def json(self, suffix: str) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def wait_for(
        self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 20.0
    ) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def wait_json(
        self, suffix: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def check(msgs: list[tuple[str, bytes, bool]]) -> bool:
            for t, p, _ in msgs:
                if t.endswith(suffix):
                    d = json.loads(p)
                    if predicate(d):
                        found.append(d)
                        return True
            return False

        if not self.wait_for(check, timeout):
            raise AssertionError(
                f"no {suffix} message matched within {timeout}s; saw {self.json(suffix)[-5:]}"
            )
        return found[0]

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def start_agent_process(
    config: Path, env: dict[str, str] | None = None, log_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """`lepton-agent run --config …` as a real process (for SIGKILL / SIGTERM tests)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    out = log_file.open("ab") if log_file else subprocess.DEVNULL
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from lepton_edge.agent.cli import main; sys.exit(main())",
            "--log-level",
            "INFO",
            "run",
            "--config",
            str(config),
        ],
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT if log_file else subprocess.DEVNULL,
        cwd=REPO,
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
