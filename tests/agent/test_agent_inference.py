"""The agent with the real inference runner (`build_agent` + `engine.source`) on the committed
Fashion-MNIST model: a deploy over MQTT starts real ONNX Runtime inference that shows up in
telemetry; a signed bundle whose model does not load is refused and the old one keeps running."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.agent.config import AgentSettings
from lepton_edge.agent.service import build_agent
from lepton_edge.shared.manifest import Manifest, Requirements, TensorSpec, Variant
from lepton_edge.shared.messages import Deploy, PowerLevel, encode
from lepton_edge.shared.signing import generate_key, sign_manifest
from lepton_edge.shared.topics import Kind, topic
from tests.agent.agent_support import ArtifactServer, Watcher, write_key
from tests.mosquitto import Mosquitto
from tests.paths import FASHION_MNIST_MODELS

MODEL = FASHION_MNIST_MODELS / "model.onnx"
KEY = generate_key()


def onnx_bundle(out: Path, bundle_id: str, data: bytes) -> Manifest:
    out.mkdir(parents=True)
    sha = hashlib.sha256(data).hexdigest()
    (out / f"{sha}.onnx").write_bytes(data)
    variant = Variant(
        id="onnx-fp32",
        format="onnx",
        precision="fp32",
        scheme="reference",
        sha256=sha,
        size_bytes=len(data),
        inputs=[TensorSpec(name="input", shape=[None, 28, 28, 1], dtype="float32")],
        outputs=[TensorSpec(name="output_0", shape=[None, 10], dtype="float32")],
        requirements=Requirements(runtime="onnxruntime"),
    )
    manifest = sign_manifest(
        Manifest(
            bundle_id=bundle_id,
            model_name="fashion-mnist",
            version="1",
            created_at=time.time(),
            num_classes=10,
            baseline={"onnx": "onnx-fp32"},
            variants=[variant],
        ),
        KEY,
    )
    (out / "manifest.json").write_text(manifest.model_dump_json())
    return manifest


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as srv:
        yield srv


def deploy(server: ArtifactServer, bundle_id: str, cid: str) -> bytes:
    return encode(
        Deploy(
            command_id=cid,
            ts=time.time(),
            bundle_id=bundle_id,
            manifest_url=server.manifest_url(bundle_id),
            artifact_base_url=server.artifact_base,
            ladder={level: "onnx-fp32" for level in PowerLevel},
        )
    )


@pytest.mark.slow
def test_deploy_runs_real_inference(
    tmp_path: Path, mosquitto: Mosquitto, server: ArtifactServer
) -> None:
    onnx_bundle(tmp_path / "real", "real", MODEL.read_bytes())
    onnx_bundle(tmp_path / "junk", "junk", b"not an onnx model at all")
    server.add_bundle(tmp_path / "real")
    server.add_bundle(tmp_path / "junk")
    settings = AgentSettings(
        device_id="inf",
        state_dir=tmp_path / "state",
        controller_key_file=write_key(tmp_path / "controller.pem", KEY),
        telemetry_interval_s=0.3,
        mqtt={"port": mosquitto.port, "reconnect_min_s": 0.1},
        probes={"sysfs_root": tmp_path / "no-sysfs"},
        engine={"source": "synthetic", "fps": 50, "threads": 1},
    )
    agent = build_agent(settings)
    assert agent.runner is not None
    w = Watcher(mosquitto.port)
    cmd = topic("inf", Kind.CMD)
    agent.start()
    try:
        w.wait_json("/state", lambda m: m["status"] == "online")
        w.publish(cmd, deploy(server, "real", "c1"))
        w.wait_json("/reply", lambda m: m["command_id"] == "c1" and m["status"] == "done", 60)
        t = w.wait_json(
            "/telemetry", lambda m: m.get("inference", {}).get("frames", 0) > 0, timeout=30
        )
        assert t["active_bundle"] == "real" and t["active_variant"] == "onnx-fp32"
        assert t["inference"]["latency_p50_ms"] > 0
        w.wait_json("/state", lambda m: m.get("active_variant") == "onnx-fp32")

        w.publish(cmd, deploy(server, "junk", "c2"))
        r = w.wait_json("/reply", lambda m: m["command_id"] == "c2" and m["status"] == "failed", 60)
        assert "refused" in r["detail"]
        seen = len(w.json("/telemetry"))
        later = w.wait_json(
            "/telemetry",
            lambda m: m["seq"] > seen + 1 and m.get("inference", {}).get("frames", 0) > 0,
        )
        assert later["active_bundle"] == "real"  # still inferring on the old bundle
    finally:
        agent.stop()
        w.close()
