"""The local endpoint over a real socket: good inputs get scores, bad ones a clear 4xx, and
the engine keeps running through them."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepton_edge.agent import runtimes
from lepton_edge.agent.engine import EngineSettings
from lepton_edge.agent.runner import InferenceRunner
from lepton_edge.shared.messages import PowerLevel
from tests.agent.inference_bundle import Bundle, fm_bundle, fm_images  # noqa: F401


def post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.fixture
def served(tmp_path: Path, fm_bundle: Bundle) -> Any:  # noqa: F811
    events: list[Any] = []
    runner = InferenceRunner(
        EngineSettings(source="local", local_port=0, threads=1, warmup_runs=1),
        emit_event=lambda *e: events.append(e),
        state_dir=tmp_path,
    )
    assert runner.endpoint is not None
    url = runner.endpoint.url
    status, doc = post(f"{url}/v1/infer", b'{"inputs": []}')
    assert status == 503 and "no model is active" in doc["error"]
    ladder = {level: fm_bundle.ids("onnx", "fp32")[0] for level in PowerLevel}
    runner.activate(fm_bundle.dir, fm_bundle.manifest, ladder)
    yield runner, url
    runner.close()


def test_scores_match_the_runtime(served: Any, fm_bundle: Bundle) -> None:  # noqa: F811
    runner, url = served
    x, _ = fm_images(8)
    direct = runtimes.load(fm_bundle.path(fm_bundle.ids("onnx", "fp32")[0])).run(x)
    status, doc = post(f"{url}/v1/infer", json.dumps({"inputs": x.tolist()}).encode())
    assert status == 200, doc
    np.testing.assert_allclose(np.array(doc["scores"]), direct, atol=1e-5)
    assert doc["top1"] == direct.argmax(1).tolist()
    assert doc["variant"] == runner.active_variant()
    if fm_bundle.manifest.labels:
        assert doc["labels"][0] == fm_bundle.manifest.labels[doc["top1"][0]]
    # one image without its channel axis, as .npy
    status, doc = post(f"{url}/v1/infer", npy(x[0, ..., 0]), "application/x-npy")
    assert status == 200 and doc["top1"] == [int(direct[0].argmax())]
    with urllib.request.urlopen(f"{url}/v1/model", timeout=10) as resp:
        model = json.loads(resp.read())
    assert model["input_shape"] == [28, 28, 1] and model["input_dtype"] == "float32"


@pytest.mark.parametrize(
    ("body", "ctype", "message"),
    [
        (
            json.dumps({"inputs": np.zeros((27, 28)).tolist()}),
            "application/json",
            "input shape 27x28",
        ),
        (
            json.dumps({"inputs": np.zeros((2, 28, 28, 3)).tolist()}),
            "application/json",
            "2x28x28x3",
        ),
        (json.dumps({"inputs": [["a"] * 28] * 28}), "application/json", "nested list of numbers"),
        (json.dumps({"inputs": [[0.0] * 28, [0.0] * 27]}), "application/json", "rectangular"),
        (json.dumps({"pixels": []}), "application/json", '"inputs"'),
        ("{not json", "application/json", "not JSON"),
        (npy(np.zeros((28, 28, 1), np.int64)), "application/x-npy", "dtype int64 not accepted"),
        (b"\x93NUMPY garbage", "application/x-npy", "not a .npy array"),
        (json.dumps({"inputs": [[float("nan")] * 28] * 28}), "application/json", "NaN"),
        ("x", "text/plain", "content type"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_engine_goes_on(
    served: Any, body: str | bytes, ctype: str, message: str
) -> None:
    runner, url = served
    frames = runner._engine.frames
    raw = body.encode() if isinstance(body, str) else body
    status, doc = post(f"{url}/v1/infer", raw, ctype)
    assert status == 400 and message in doc["error"], doc
    x, _ = fm_images(1)
    status, doc = post(f"{url}/v1/infer", json.dumps({"inputs": x.tolist()}).encode())
    assert status == 200 and len(doc["top1"]) == 1
    assert runner._engine.frames == frames + 1 and runner._engine.errors == 0


def test_unknown_path(served: Any) -> None:
    _, url = served
    status, doc = post(f"{url}/v2/whatever", b"{}")
    assert status == 404 and "/v1/infer" in doc["error"]
