"""Real ONNX Runtime and LiteRT sessions on the Fashion-MNIST bundle."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.agent import runtimes
from lepton_edge.agent.runtimes import RuntimeOptions, VariantLoadError
from lepton_edge.agent.runtimes.onnx import choose_providers
from tests.agent.inference_bundle import Bundle, fm_bundle, fm_images  # noqa: F401


def test_installed_and_providers() -> None:
    found = runtimes.installed()
    assert set(found) == {"onnxruntime", "litert"}
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
