"""Real ONNX Runtime and LiteRT sessions on the Fashion-MNIST bundle."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.agent import runtimes
from lepton_edge.agent.runtimes import RuntimeOptions, VariantLoadError
from lepton_edge.agent.runtimes.onnx import choose_providers
from tests.agent.inference_bundle import Bundle, fm_bundle, fm_images  # noqa: F401


def test_installed_and_providers() -> None:
    found = runtimes.installed()
    assert set(found) == {"onnxruntime", "litert", "openvino"}
    assert all(found.values())
    assert "CPUExecutionProvider" in runtimes.onnx_providers()


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_fp32_and_int8_agree_on_top1(fm_bundle: Bundle, fmt: str) -> None:  # noqa: F811
    x, y = fm_images()
    fp32 = runtimes.load(fm_bundle.path(fm_bundle.ids(fmt, "fp32")[0]), threads=1)
    base = fp32.run(x)
    assert base.dtype == np.float32 and base.shape == (len(x), 10)
    assert (base.argmax(1) == y).mean() > 0.85
    int8_ids = fm_bundle.ids(fmt, "int8")
    assert int8_ids
    for vid in int8_ids:
        variant = fm_bundle.manifest.variant(vid)
        with runtimes.load(fm_bundle.path(vid), variant, threads=1) as rt:
            out = rt.run(x)  # float in, float out, whatever the file's own tensor types
            assert out.dtype == np.float32 and out.shape == base.shape
            agreement = (out.argmax(1) == base.argmax(1)).mean()
            # A broken int8 path agrees on ~10 %; ONNX Runtime 1.32's static int8 gives 98.4 %.
            assert agreement >= 0.98, f"{vid}: top-1 agrees with fp32 on {agreement:.2%}"


def test_int8_io_tflite_is_quantized_for_the_caller(fm_bundle: Bundle) -> None:  # noqa: F811
    int8_io = [
        vid
        for vid in fm_bundle.ids("tflite", "int8")
        if fm_bundle.manifest.variant(vid).inputs[0].dtype in ("int8", "uint8")
    ]
    if not int8_io:
        pytest.skip("bundle has no integer-input TFLite variant")
    x, _ = fm_images(64)
    rt = runtimes.load(fm_bundle.path(int8_io[0]), threads=1)
    assert rt.inputs[0].dtype in ("int8", "uint8")
    single = np.concatenate([rt.run(x[i : i + 1]) for i in range(8)])
    batch = rt.run(x[:8])  # batch size change re-plans the graph and gives the same result
    np.testing.assert_allclose(single, batch, atol=1e-5)
    rt.close()


def test_onnx_optimized_model_cache(tmp_path: Path, fm_bundle: Bundle) -> None:  # noqa: F811
    path = fm_bundle.path("onnx-fp32")
    opts = RuntimeOptions(threads=1, cache_dir=tmp_path / "cache")
    first = runtimes.load(path, options=opts)
    assert not first.cached  # type: ignore[attr-defined]
    cached = list((tmp_path / "cache").glob("*.onnx"))
    assert len(cached) == 1 and cached[0].name.startswith(path.stem[:64])
    second = runtimes.load(path, options=opts)  # a restart: loads the optimized graph
    assert second.cached  # type: ignore[attr-defined]
    x, _ = fm_images(32)
    np.testing.assert_allclose(first.run(x), second.run(x), atol=1e-5)
    cached[0].write_bytes(b"garbage")  # a corrupt cache entry is rebuilt, not fatal
    third = runtimes.load(path, options=opts)
    assert not third.cached  # type: ignore[attr-defined]
    np.testing.assert_allclose(first.run(x), third.run(x), atol=1e-5)


def test_provider_choice() -> None:
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(avail) == avail
    assert choose_providers(avail, has_gpu=False) == ["CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider", "AzureExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    assert choose_providers(avail, ["OpenVINOExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_rejected_file_is_a_clear_error(tmp_path: Path, suffix: str) -> None:
    bad = tmp_path / f"broken{suffix}"
    bad.write_bytes(b"this is not a model" * 10)
    with pytest.raises(VariantLoadError, match=r"variant broken: .* rejected broken"):
        runtimes.load(bad)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VariantLoadError, match="unknown model format"):
        runtimes.load(tmp_path / "model.pt")
    with pytest.raises(VariantLoadError, match="does not exist"):
        runtimes.load(tmp_path / "missing.onnx")


def test_failing_delegate_falls_back_to_cpu(
    fm_bundle: Bundle,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    opts = RuntimeOptions(threads=1, delegates=["libdoes-not-exist-edgetpu.so.1"])
    with caplog.at_level(logging.WARNING):
        rt = runtimes.load(fm_bundle.path("tflite-fp32"), options=opts)
    assert rt.accelerator == "XNNPACK"
    assert "failed to load" in caplog.text
    x, _ = fm_images(4)
    assert rt.run(x).shape == (4, 10)


def test_tflite_runtime_fallback_when_ai_edge_litert_is_missing(
    fm_bundle: Bundle,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Old boxes have `tflite_runtime` only: the same interpreter API under another name."""
    import importlib.machinery
    import sys
    import types

    from ai_edge_litert import interpreter

    legacy = types.ModuleType("tflite_runtime")
    legacy.__spec__ = importlib.machinery.ModuleSpec("tflite_runtime", None)
    legacy.interpreter = interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails
    monkeypatch.setitem(sys.modules, "tflite_runtime", legacy)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", interpreter)
    rt = runtimes.load(fm_bundle.path("tflite-fp32"), threads=1)
    x, y = fm_images(200)
    assert (rt.run(x).argmax(1) == y).mean() > 0.8
    rt.close()


x86_only = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"),
    reason="OpenVINO variants are built and timed on x86-64 hosts (its int8 kernels there)",
)


@x86_only
def test_openvino_runs_fp32_as_fp32_and_its_int8_variant(fm_bundle: Bundle) -> None:  # noqa: F811
    x, _ = fm_images(256)
    reference = runtimes.load(fm_bundle.path("onnx-fp32"), threads=1).run(x)
    backend = runtimes.backend("openvino")
    with backend.load(fm_bundle.path("onnx-fp32"), "ov-fp32", RuntimeOptions(threads=1)) as rt:
        assert rt.accelerator == "CPU" and rt.name == "openvino"
        out = rt.run(x)
        assert np.abs(out - reference).max() < 1e-4  # fp32 agrees to float rounding
        # The hint itself: OpenVINO 2026.4 picks f32 on this CPU by default, bf16 on CPUs with
        # AMX, where the comparison above would fail.
        assert str(rt._compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"  # type: ignore[attr-defined]
        assert [o.shape for o in rt.run_all(x[:3])] == [(3, 10)]
    variant = fm_bundle.manifest.variant("openvino-int8")
    assert variant.requirements.runtime == "openvino" and variant.precision == "int8"
    with runtimes.load(fm_bundle.path("openvino-int8"), variant, threads=1) as rt:
        assert rt.name == "openvino"
        agreement = (rt.run(x).argmax(1) == reference.argmax(1)).mean()
        assert agreement >= 0.97


@x86_only
def test_openvino_device_that_is_not_there_falls_back_to_cpu(
    fm_bundle: Bundle,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    from lepton_edge.agent.runtimes.openvino import choose_device

    assert choose_device(["CPU", "GPU.0", "NPU"]) == "GPU.0"
    assert choose_device(["CPU", "NPU"]) == "NPU"
    assert choose_device(["CPU", "GPU.0"], "gpu") == "GPU.0"
    options = RuntimeOptions(threads=1, device="NPU")
    with caplog.at_level(logging.WARNING):
        rt = runtimes.backend("openvino").load(fm_bundle.path("onnx-fp32"), "v", options)
    assert rt.accelerator == "CPU"
    assert "OpenVINO device NPU is not available here (CPU); using CPU" in caplog.text


@x86_only
def test_a_model_openvino_cannot_compile_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a model" * 10)
    with pytest.raises(VariantLoadError) as info:
        runtimes.backend("openvino").load(bad, "broken", RuntimeOptions())
    message = str(info.value)
    assert message.startswith("variant broken: OpenVINO could not compile broken.onnx for CPU")
    assert "\n" not in message


@x86_only
def test_openvino_writes_nothing_to_the_home_directory(tmp_path: Path, fm_bundle: Bundle) -> None:  # noqa: F811
    code = (
        "import sys, numpy as np; from pathlib import Path;"
        "from lepton_edge.agent.runtimes import RuntimeOptions, backend;"
        "rt = backend('openvino').load(Path(sys.argv[1]), 'v', RuntimeOptions(threads=1));"
        "rt.run(np.zeros((1, 28, 28, 1), np.float32))"
    )
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", code, str(fm_bundle.path("onnx-fp32"))],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert list(home.iterdir()) == []  # no ~/intel consent folder, no telemetry
