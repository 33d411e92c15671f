"""Results on MQTT: a real agent on a real mosquitto runs the detector over a video file and
publishes `result` messages that validate against the exported JSON Schema; the rate limit
and `changes_only` on a controlled sequence of answers; precision switches mid-video lose
no frame; the local endpoint answers an image with the same typed result."""

from __future__ import annotations

import base64
import io
import itertools
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from lepton_edge.agent.config import AgentSettings
from lepton_edge.agent.engine import EngineSettings
from lepton_edge.agent.pipeline import Answer, Pipeline
from lepton_edge.agent.results import ResultPublisher, ResultSettings
from lepton_edge.agent.runner import InferenceRunner
from lepton_edge.agent.service import build_agent
from lepton_edge.agent.sources import Frame, Result
from lepton_edge.controller.demo.shapes import scene
from lepton_edge.controller.demo.video import write_video
from lepton_edge.shared.manifest import Task
from lepton_edge.shared.messages import Deploy, InferenceResult, PowerLevel, SetPolicy, encode
from lepton_edge.shared.schema import schemas
from lepton_edge.shared.signing import generate_key
from lepton_edge.shared.topics import Kind, topic
from tests.agent.agent_support import ArtifactServer, Watcher, write_key
from tests.agent.detector_bundle import LADDER, build_detector_bundle
from tests.mosquitto import Mosquitto

KEY = generate_key()
SCENE = scene(60, seed=5)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "shapes.mp4", [f for f, _ in SCENE])


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    with ArtifactServer() as srv:
        yield srv


@pytest.mark.slow
def test_agent_publishes_detections_that_match_the_schema(
    tmp_path: Path, mosquitto: Mosquitto, server: ArtifactServer, clip: Path
) -> None:
    build_detector_bundle(tmp_path / "bundle", KEY)
    server.add_bundle(tmp_path / "bundle")
    settings = AgentSettings(
        device_id="cam1",
        state_dir=tmp_path / "state",
        controller_key_file=write_key(tmp_path / "controller.pem", KEY),
        telemetry_interval_s=0.3,
        mqtt={"port": mosquitto.port, "reconnect_min_s": 0.1},
        probes={"sysfs_root": tmp_path / "no-sysfs"},
        engine={"source": "video", "video": str(clip), "video_loop": True, "threads": 1},
        results={"max_per_s": 20, "thumbnail_interval_s": 0.5},
    )
    agent = build_agent(settings)
    watcher = Watcher(mosquitto.port)
    agent.start()
    try:
        watcher.wait_json("/state", lambda m: m["status"] == "online")
        deploy = Deploy(
            command_id="d1",
            ts=time.time(),
            bundle_id="shapes-1",
            manifest_url=server.manifest_url("shapes-1"),
            artifact_base_url=server.artifact_base,
            ladder=LADDER,
        )
        watcher.publish(topic("cam1", Kind.CMD), encode(deploy))
        watcher.wait_json("/reply", lambda m: m["status"] == "done", 60)
        watcher.wait_for(lambda msgs: sum(t.endswith("/result") for t, _, _ in msgs) >= 20, 30)
        watcher.wait_json("/result", lambda m: "thumbnail_jpeg" in m)
        t = watcher.wait_json(
            "/telemetry", lambda m: m.get("inference", {}).get("results_published", 0) > 0
        )
        assert t["inference"]["results_suppressed"] > 0  # 30 fps video, 20 results/s
    finally:
        agent.stop()
        watcher.close()
    schema = schemas()["result"]
    results = watcher.json("/result")
    for doc in results:
        jsonschema.validate(doc, schema)
    assert all(r["task"] == "detection" and r["width"] == 640 for r in results)
    assert [r["seq"] for r in results] == sorted(r["seq"] for r in results)
    found = [d for r in results for d in r["detections"]]
    assert found and {d["label"] for d in found} <= {"square", "disc", "triangle"}
    assert max(d["box"][2] for d in found) > 128  # source pixels, not the model's 128
    shot = next(r for r in results if "thumbnail_jpeg" in r)
    image = Image.open(io.BytesIO(base64.b64decode(shot["thumbnail_jpeg"])))
    assert image.format == "JPEG" and image.size == (320, 240)


def _answers(classes: list[int]) -> Result:
    pipeline = Pipeline(None, _Post(), ("a", "b", "c"), (4,), "b1")  # type: ignore[arg-type]
    return Result(
        "v",
        answers=[Answer(Task.CLASSIFICATION, top=[(c, 0.9)]) for c in classes],
        pipeline=pipeline,
    )


class _Post:
    task = Task.CLASSIFICATION
    index = 0


def test_rate_limit_and_changes_only_on_a_controlled_sequence() -> None:
    now = [0.0]
    sent: list[InferenceResult] = []

    def publisher(**settings: object) -> ResultPublisher:
        return ResultPublisher(
            "d1",
            ResultSettings(**settings),  # type: ignore[arg-type]
            send=lambda p: sent.append(InferenceResult.model_validate_json(p)) or True,
            send_reliable=lambda make: None,
            monotonic=lambda: now[0],
        )

    limited = publisher(max_per_s=10)
    for _ in range(100):  # 100 frames in one second at 100 fps
        limited(Frame(index=0), _answers([0]))
        now[0] += 0.01
    assert len(sent) == 10 and limited.take_counts() == {
        "published": 10,
        "suppressed": 90,
        "lost": 0,
    }

    sent.clear()
    changes = publisher(max_per_s=1000, changes_only=True)
    sequence = [0, 0, 0, 1, 1, 0, 0, 2, 2, 2]
    for c in sequence:
        changes(Frame(index=0), _answers([c]))
        now[0] += 0.01
    assert [r.top[0].label for r in sent if r.top] == ["a", "b", "a", "c"]
    assert changes.take_counts()["suppressed"] == 6


def test_precision_switches_mid_video_lose_no_frame(tmp_path: Path, clip: Path) -> None:
    build_detector_bundle(tmp_path / "bundle", KEY)
    from lepton_edge.shared.bundle import verify_bundle

    manifest = verify_bundle(tmp_path / "bundle", None)
    indices: list[int] = []
    variants: list[str | None] = []

    def on_result(frame: Frame, result: Result) -> None:
        assert result.error is None and result.answers
        indices.append(frame.index)
        variants.append(result.variant)

    runner = InferenceRunner(
        EngineSettings(source="video", video=str(clip), video_pace=True, threads=1),
        emit_event=lambda *a: None,
        on_result=on_result,
    )
    runner.activate(tmp_path / "bundle", manifest, LADDER)
    levels = [PowerLevel.SAVER, PowerLevel.PERFORMANCE] * 10
    for i, level in enumerate(levels):  # 20 switches during a 2 s clip
        runner.set_policy(SetPolicy(command_id=f"p{i}", ts=time.time(), override=level))
        time.sleep(0.08)
    engine = runner.engine
    assert engine is not None and engine.wait(30)
    runner.close()
    assert indices == list(range(60))  # every frame once, in order, across every switch
    assert {"onnx-fp32", "onnx-fp16"} <= set(variants)
    assert sum(a != b for a, b in itertools.pairwise(variants)) >= 5


def test_local_endpoint_answers_an_image_with_detections(tmp_path: Path) -> None:
    build_detector_bundle(tmp_path / "bundle", KEY)
    from lepton_edge.shared.bundle import verify_bundle

    manifest = verify_bundle(tmp_path / "bundle", None)
    runner = InferenceRunner(
        EngineSettings(source="local", local_port=0, threads=1), emit_event=lambda *a: None
    )
    try:
        runner.activate(tmp_path / "bundle", manifest, LADDER)
        assert runner.endpoint is not None
        image, truth = SCENE[0]
        body = io.BytesIO()
        Image.fromarray(image).save(body, format="PNG")
        request = urllib.request.Request(
            f"{runner.endpoint.url}/v1/infer",
            data=body.getvalue(),
            headers={"Content-Type": "image/png"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            doc = json.loads(response.read())
        assert doc["task"] == "detection" and "scores" not in doc
        boxes = np.asarray([d["box"] for d in doc["results"][0]["detections"]])
        assert len(boxes) >= 1 and (boxes[:, 2] > 128).any()
        grey = np.zeros((4, 4, 2), np.uint8)  # two channels: not an image
        npy = io.BytesIO()
        np.save(npy, grey)
        bad = urllib.request.Request(
            f"{runner.endpoint.url}/v1/infer",
            data=npy.getvalue(),
            headers={"Content-Type": "application/x-npy"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=10)
        assert err.value.code == 400 and "not accepted" in json.loads(err.value.read())["error"]
        assert len(truth) >= 1
    finally:
        runner.close()
