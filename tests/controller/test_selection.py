"""Selection: filters with reasons, on-device latency first, different ladders per hardware."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from lepton_edge.controller.app import create_app
from lepton_edge.controller.bundles import pack
from lepton_edge.controller.selection import Measured, NoEligibleVariant, select
from lepton_edge.shared.messages import PowerLevel
from lepton_edge.shared.signing import generate_key
from tests.controller.conftest import AUTH, make_settings
from tests.controller.helpers import SimAgent, make_bundle, profile, wait_for

P, B, S, C = PowerLevel.PERFORMANCE, PowerLevel.BALANCED, PowerLevel.SAVER, PowerLevel.CRITICAL


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):  # type: ignore[no-untyped-def]
    variants = [
        ("onnx-fp32", "onnx", "fp32", 0.900, 0.050, 4000, []),
        ("onnx-fp16", "onnx", "fp16", 0.899, 0.060, 2000, ["fp16"]),
        ("onnx-int8-static", "onnx", "int8", 0.898, 0.048, 1000, []),
        ("onnx-int8-dynamic", "onnx", "int8", 0.880, 0.150, 1000, []),  # 2 points lost
        ("tflite-fp32", "tflite", "fp32", 0.900, 0.040, 4000, []),
        ("tflite-int8-static", "tflite", "int8", 0.897, 0.030, 1000, []),
    ]
    return make_bundle(tmp_path_factory.mktemp("b"), generate_key(), variants=variants)


def test_filters_explain_every_rejection(manifest) -> None:  # type: ignore[no-untyped-def]
    hw = profile(runtimes={"onnxruntime": "1.20"}, features=["avx2"], memory_mb=512)
    sel = select(manifest, hw)
    rejected = sel.ladder.rejected
    assert "needs runtime litert" in rejected["tflite-fp32"]
    assert "needs CPU features fp16" in rejected["onnx-fp16"]
    assert "over the 1.00-point tolerance" in rejected["onnx-int8-dynamic"]
    chosen = set(sel.ladder.mapping().values())
    assert chosen | set(rejected) == {v.id for v in manifest.variants}
    assert not chosen & set(rejected)
    # build-host fallback, said so
    assert set(sel.latency_source.values()) == {"build-host"}
    assert "no on-device benchmark" in sel.notes[0]
    # more memory needed than the device has
    low = manifest.model_copy(deep=True)
    low.variants[0].requirements.min_memory_mb = 1024
    assert "needs 1024 MB" in select(low, hw).ladder.rejected["onnx-fp32"]
    with pytest.raises(NoEligibleVariant) as err:
        select(manifest, profile(runtimes={}))
    assert "needs runtime onnxruntime" in err.value.rejected["onnx-fp32"]


def test_device_measurements_rank_and_ladders_differ_by_hardware(manifest) -> None:  # type: ignore[no-untyped-def]
    # On this class int8 is slow on-device (as ONNX dynamic int8 often is): fp32 everywhere.
    x86 = profile(runtimes={"onnxruntime": "1.20"}, features=["avx2"])
    slow_int8 = {"onnx-fp32": Measured(0.05), "onnx-int8-static": Measured(0.20)}
    sel = select(manifest, x86, slow_int8)
    assert set(sel.ladder.mapping().values()) == {"onnx-fp32"}
    assert sel.latency_source == {"onnx-fp32": "device", "onnx-int8-static": "device"}
    assert "slower" in sel.ladder.rejected["onnx-int8-static"]

    # On an ARM box with VNNI-like dot products int8 is fast: two distinct variants.
    arm = profile(cpu_model="Cortex-A76", arch="aarch64", features=["neon", "asimddp", "fp16"])
    fast_int8 = {
        "onnx-fp32": Measured(0.09),
        "onnx-fp16": Measured(0.08),
        "onnx-int8-static": Measured(0.05),
        "tflite-fp32": Measured(0.07),
        "tflite-int8-static": Measured(0.03),
        "onnx-int8-dynamic": Measured(None, error="unsupported op"),
    }
    sel = select(manifest, arm, fast_int8)
    ladder = sel.ladder.mapping()
    assert ladder[C] == "tflite-int8-static"
    assert ladder[P] != ladder[C]
    assert ladder[P] in {"tflite-fp32", "onnx-int8-static"} or ladder[P].endswith("fp32")
    for step in sel.ladder.steps:
        assert "(device)" in step.why
    # a failed on-device run rejects the variant with the device's error (tolerance first here)
    assert sel.ladder.rejected["onnx-int8-dynamic"]
    # every variant is either chosen or explained
    assert set(ladder.values()) | set(sel.ladder.rejected) == {v.id for v in manifest.variants}


def test_equal_latency_still_gives_a_cheaper_critical(manifest) -> None:  # type: ignore[no-untyped-def]
    """Tiny models run every variant in about the same time: the smaller file is the cheap one."""
    hw = profile(runtimes={"litert": "1.2"}, features=[])
    same = {"tflite-fp32": Measured(0.020), "tflite-int8-static": Measured(0.021)}
    ladder = select(manifest, hw, same).ladder.mapping()
    assert ladder[P] == "tflite-fp32" and ladder[C] == "tflite-int8-static"
    assert ladder[B] == "tflite-fp32" and ladder[S] == "tflite-int8-static"


def test_openvino_variants_are_chosen_on_merit_where_openvino_is(manifest) -> None:  # type: ignore[no-untyped-def]
    """An openvino-int8 variant needs the openvino runtime; where a device has it, its
    measured speed decides (fixed figures here, as the device class reported them)."""
    with_ov = manifest.model_copy(deep=True)
    ov = with_ov.variant("onnx-int8-static").model_copy(deep=True)
    ov.id = "openvino-int8"
    ov.requirements.runtime = "openvino"
    with_ov.variants.append(ov)
    plain = profile(runtimes={"onnxruntime": "1.20"}, features=["avx2"])
    sel = select(with_ov, plain)
    assert (
        sel.ladder.rejected["openvino-int8"] == "needs runtime openvino, the device has onnxruntime"
    )
    intel = profile(runtimes={"onnxruntime": "1.20", "openvino": "2026.4"}, features=["avx2"])
    measured = {
        "onnx-fp32": Measured(1.00),
        "onnx-int8-static": Measured(0.60),
        "openvino-int8": Measured(0.30),
    }
    ladder = select(with_ov, intel, measured).ladder.mapping()
    assert ladder[C] == "openvino-int8"  # the fastest of all, within the tolerance
    slower = {**measured, "openvino-int8": Measured(0.90)}
    assert "openvino-int8" not in select(with_ov, intel, slower).ladder.mapping().values()


def test_benchmark_command_feeds_selection_per_hardware_class(tmp_path, db_url, mosquitto) -> None:
    settings = make_settings(tmp_path, db_url, mosquitto)
    with TestClient(create_app(settings)) as client:
        ctl = client.app.state.controller
        assert ctl.bridge.wait_connected()
        make_bundle(tmp_path / "b", ctl.store.key)
        assert (
            client.post("/api/v1/bundles", content=pack(tmp_path / "b"), headers=AUTH).status_code
            == 201
        )
        # two devices of the same class, one measured: both use the measurement
        timings = {
            "onnx-fp32": 0.05,
            "onnx-int8-static": 0.5,
            "onnx-fp16": 0.4,
            "tflite-fp32": 0.6,
            "tflite-int8-static": 0.7,
        }
        agents = [SimAgent(f"box-{i}", mosquitto.port, timings=timings).start() for i in range(2)]
        try:
            wait_for(
                lambda: len(client.get("/api/v1/devices?online=true", headers=AUTH).json()) == 2
            )
            before = client.get(
                "/api/v1/devices/box-1/ladder?bundle_id=fmnist-1", headers=AUTH
            ).json()
            assert set(before["latency_source"].values()) == {"build-host"}
            sent = client.post("/api/v1/benchmarks", json={"bundle_id": "fmnist-1"}, headers=AUTH)
            assert sent.status_code == 202 and len(sent.json()) == 1  # one device per class
            assert sent.json()[0]["published"] is True
            wait_for(
                lambda: (
                    len(client.get("/api/v1/benchmarks?bundle_id=fmnist-1", headers=AUTH).json())
                    == 5
                ),
                what="benchmark results",
            )
            other = next(d for d in ("box-0", "box-1") if d != sent.json()[0]["device_id"])
            after = client.get(
                f"/api/v1/devices/{other}/ladder?bundle_id=fmnist-1", headers=AUTH
            ).json()
            assert set(after["latency_source"].values()) == {"device"}
            assert after["ladder"]["steps"][0]["variant_id"] == "onnx-fp32"
            assert after["variants"]["onnx-fp32"]["precision"] == "fp32"
            assert after["variants"]["onnx-fp32"]["architecture"] == "base"  # made before
            assert set(after["variants"]) == {s["variant_id"] for s in after["ladder"]["steps"]}
            assert "slower" in after["ladder"]["rejected"]["tflite-int8-static"]
            bad = client.post(
                "/api/v1/benchmarks",
                json={"bundle_id": "fmnist-1", "variant_ids": ["nope"]},
                headers=AUTH,
            )
            assert bad.status_code == 422 and "variant_ids" in bad.json()["detail"]
            assert (
                client.post(
                    "/api/v1/benchmarks", json={"bundle_id": "nope"}, headers=AUTH
                ).status_code
                == 404
            )
            assert (
                client.get("/api/v1/devices/box-0/ladder?bundle_id=nope", headers=AUTH).status_code
                == 404
            )
        finally:
            for a in agents:
                a.stop()
        time.sleep(0)
