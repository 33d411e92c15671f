"""The controller with the factory's real Fashion-MNIST bundle: upload, ladders, and the
build endpoint that runs the factory itself."""

from __future__ import annotations

import io
import sys
import tarfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lepton_edge.controller.app import create_app
from lepton_edge.controller.bundles import pack
from lepton_edge.controller.fleet import Batch
from lepton_edge.controller.tables import BenchmarkRecord
from lepton_edge.shared.messages import PowerLevel, State
from lepton_edge.shared.signing import private_pem
from tests.controller.conftest import AUTH, make_settings
from tests.controller.helpers import profile
from tests.paths import FASHION_MNIST_MODELS

REPO = Path(__file__).resolve().parents[2]


#: Latency per scheme (the part of the variant id after the format), in ms.
FIXED_MS = {
    "int8": 0.45,  # openvino-int8
    "int8-mixed": 0.55,
    "fp32": 1.0,
    "fp16": 0.8,
    "int8-static": 0.5,
    "int8-static-mixed": 0.6,
    "int8-dynamic": 1.6,
    "int8-weight-only": 0.9,
}


def _client_with_key(tmp_path: Path, db_url: str, key) -> TestClient:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, db_url, rollout_loop=False)
    settings.key_path().parent.mkdir(parents=True, exist_ok=True)
    settings.key_path().write_bytes(private_pem(key))
    return TestClient(create_app(settings))


def test_reference_bundle_ladders_differ_by_hardware(
    tmp_path: Path, db_url: str, reference_bundle
) -> None:  # type: ignore[no-untyped-def]
    with _client_with_key(tmp_path, db_url, reference_bundle.key) as client:
        r = client.post("/api/v1/bundles", content=pack(reference_bundle.dir), headers=AUTH)
        assert r.status_code == 201, r.text
        bundle_id = r.json()["bundle_id"]
        ctl = client.app.state.controller
        x86 = profile(cpu_model="x86 box", features=["avx2", "avx512_vnni", "fp16"])
        jetson = profile(
            cpu_model="Carmel",
            arch="aarch64",
            features=["neon", "asimddp", "fp16"],
            runtimes={"onnxruntime": "1.20"},
        )
        pi = profile(
            cpu_model="Cortex-A72", arch="aarch64", features=["neon"], runtimes={"litert": "1.2"}
        )
        with ctl.db.session() as s:
            ctl.fleet.apply(
                s,
                Batch(
                    states=[
                        State(device_id="x86", ts=time.time(), status="online", hardware=x86),
                        State(device_id="pi", ts=time.time(), status="online", hardware=pi),
                        State(device_id="jetson", ts=time.time(), status="online", hardware=jetson),
                    ]
                ),
            )
            # Fixed on-device latencies: the ladder must not hang on build-host timing noise
            # (a 27 us model timed on a loaded 2-core box made two ladders collapse to one).
            for hw in (x86, pi, jetson):
                for v in reference_bundle.manifest.variants:
                    s.add(
                        BenchmarkRecord(
                            hardware_class=hw.hardware_class(),
                            bundle_id=bundle_id,
                            variant_id=v.id,
                            device_id="bench",
                            p50_ms=FIXED_MS[v.id.split("-", 1)[1]],
                            p99_ms=2 * FIXED_MS[v.id.split("-", 1)[1]],
                            measured_at=time.time(),
                        )
                    )
        ladders = {}
        for device in ("x86", "pi", "jetson"):
            out = client.get(
                f"/api/v1/devices/{device}/ladder?bundle_id={bundle_id}", headers=AUTH
            ).json()
            ladders[device] = {s["level"]: s["variant_id"] for s in out["ladder"]["steps"]}
            chosen = set(ladders[device].values())
            assert chosen | set(out["ladder"]["rejected"]) == {
                v.id for v in reference_bundle.manifest.variants
            }
            assert len(chosen) >= 2, (device, out)  # the demo needs precision switches
        assert all(v.startswith("tflite") for v in ladders["pi"].values())
        assert all(v.startswith("onnx") for v in ladders["jetson"].values())
        assert ladders["jetson"] != ladders["pi"]
        assert ladders["pi"][PowerLevel.CRITICAL] != ladders["pi"][PowerLevel.PERFORMANCE]


@pytest.mark.slow
def test_build_endpoint_runs_the_factory(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, rollout_loop=False)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(FASHION_MNIST_MODELS / "model.tflite", arcname="model.tflite")
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/api/v1/bundles/build?model_name=fmnist&version=7",
            content=buf.getvalue(),
            headers=AUTH,
        )
        assert r.status_code == 201, r.text
        assert any(v.startswith("tflite-int8") for v in r.json()["variants"])
        detail = client.get(f"/api/v1/bundles/{r.json()['bundle_id']}", headers=AUTH).json()
        assert detail["manifest"]["variants"][0]["metrics"]["accuracy"] > 0.8
        bad = io.BytesIO()
        with tarfile.open(fileobj=bad, mode="w:gz") as tar:
            info = tarfile.TarInfo("model.onnx")
            info.size = 5
            tar.addfile(info, io.BytesIO(b"junk!"))
        r = client.post(
            "/api/v1/bundles/build?model_name=junk", content=bad.getvalue(), headers=AUTH
        )
        assert r.status_code == 422 and "factory refused" in r.json()["detail"]
        r = client.post("/api/v1/bundles/build", content=bad.getvalue(), headers=AUTH)
        assert r.status_code == 422 and "model_name" in r.json()["message"]


def test_without_the_factory_the_build_endpoint_says_what_to_install(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on a controller installed without it
    settings = make_settings(tmp_path, db_url, rollout_loop=False)
    with TestClient(create_app(settings)) as client:
        assert "/api/v1/bundles/build" not in client.get("/openapi.json").json()["paths"]
        r = client.post("/api/v1/bundles/build?model_name=m", content=b"x", headers=AUTH)
        assert r.status_code == 501 and "lepton-edge[factory]" in r.json()["detail"], r.text
        assert client.get("/api/v1/bundles", headers=AUTH).status_code == 200
