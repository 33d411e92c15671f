"""Video sources on real files and a real HTTP MJPEG camera, and the detector's pipeline on
the project's own rendered video: boxes come back in source pixels where the shapes are."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.agent.engine import Engine, VariantSpec
from lepton_edge.agent.runner import pipeline_for
from lepton_edge.agent.runtimes import RuntimeOptions
from lepton_edge.agent.sources import Frame, Result
from lepton_edge.agent.sources.video import VideoSource
from lepton_edge.controller.demo.shapes import scene
from lepton_edge.controller.demo.video import write_video
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.signing import generate_key
from lepton_edge.shared.tasks import box_iou
from tests.agent.detector_bundle import build_detector_bundle
from tests.agent.streams import MjpegCamera, jpeg

SCENE = scene(90, seed=4)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "shapes.mp4", [f for f, _ in SCENE])


def drain(source: VideoSource, timeout: float = 30) -> list[Frame]:
    frames, deadline = [], time.monotonic() + timeout
    while not source.done and time.monotonic() < deadline:
        frame = source.read(0.5)
        if frame is not None:
            frames.append(frame)
    return frames


def test_a_file_is_read_whole_in_order_and_loops(clip: Path) -> None:
    source = VideoSource(str(clip), pace=False)
    frames = drain(source)
    assert [f.index for f in frames] == list(range(90)) and source.done
    assert frames[0].image is not None and frames[0].image.shape == (1, 480, 640, 3)
    # lossy, but the frame it decoded is the frame that was written
    error = np.abs(frames[10].image[0].astype(int) - SCENE[10][0].astype(int)).mean()
    assert error < 8
    source.close()
    looping = VideoSource(str(clip), pace=False, loop=True)
    seen = [looping.read(2) for _ in range(120)]
    looping.close()
    assert all(f is not None for f in seen) and not looping.skipped


def test_bad_video_inputs_are_one_line_errors(tmp_path: Path, clip: Path) -> None:
    with pytest.raises(UserError, match=r"camera /dev/video97 does not exist: `ls /dev/video\*`"):
        VideoSource("/dev/video97")
    with pytest.raises(UserError, match=r"video file .* does not exist"):
        VideoSource(str(tmp_path / "missing.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 4096)
    with pytest.raises(UserError, match=r"cannot read video file|has no frames"):
        VideoSource(str(junk))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[:2000])
    with pytest.raises(UserError, match=r"truncated|cannot read|no frames"):
        VideoSource(str(truncated))


def test_a_live_stream_keeps_the_newest_frame_counts_skips_and_reconnects() -> None:
    parts = [jpeg(f) for f, _ in SCENE[:10]]
    camera = MjpegCamera(parts, fps=60).start()
    events: list[tuple[str, str]] = []
    source = VideoSource(
        camera.url, on_event=lambda k, r: events.append((k, r)), reconnect_min_s=0.1
    )
    try:
        assert source.read(10) is not None
        time.sleep(0.5)  # a slow model: frames arrive and nobody takes them
        newest = source.read(1)
        assert newest is not None and source.skipped >= 10  # kept one, skipped the rest
        camera.stop()
        deadline = time.monotonic() + 15
        while not any(k == "lost" for k, _ in events) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(k == "lost" for k, _ in events), events
        camera = MjpegCamera(parts, fps=60, port=camera.port).start()
        deadline = time.monotonic() + 20
        while not any(k == "reconnected" for k, _ in events) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(k == "reconnected" for k, _ in events), events
        assert source.read(5) is not None and source.reconnects == 1
    finally:
        source.close()
        camera.stop()


def test_a_stream_that_does_not_answer_is_reported_not_fatal() -> None:
    from tests.mosquitto import free_port

    events: list[tuple[str, str]] = []
    source = VideoSource(
        f"http://127.0.0.1:{free_port()}/cam", on_event=lambda k, r: events.append((k, r))
    )
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    source.close()
    assert events and events[0][0] == "lost" and "Connection refused" in events[0][1]


def test_detector_finds_the_shapes_of_a_video_in_source_pixels(tmp_path: Path, clip: Path) -> None:
    manifest = build_detector_bundle(tmp_path / "bundle", generate_key())
    pipeline = pipeline_for(tmp_path / "bundle", manifest, "onnx-fp32")
    variant = manifest.variant("onnx-fp32")
    spec = VariantSpec("onnx-fp32", tmp_path / "bundle" / variant.filename, variant, pipeline)
    results: list[tuple[int, Result]] = []
    engine = Engine(
        VideoSource(str(clip), pace=False),
        options=RuntimeOptions(threads=1),
        on_result=lambda f, r: results.append((f.index, r)),
    )
    engine.load(spec)
    engine.start()
    assert engine.wait(60)
    engine.close()
    assert len(results) == 90 and engine.errors == 0
    matched = total = 0
    for index, result in results:
        truth = SCENE[index][1]
        found = result.answers[0].detections
        assert found is not None
        total += len(truth)
        if len(truth) and len(found):
            iou = box_iou(truth[:, :4], found.boxes)
            best = iou.argmax(1)
            matched += int(((iou.max(1) > 0.5) & (found.classes[best] == truth[:, 4])).sum())
        assert (found.boxes[:, 2] <= 640).all() and (found.boxes[:, 3] <= 480).all()
    assert matched / total > 0.6, (matched, total)  # boxes in 640x480, not the 128 input
