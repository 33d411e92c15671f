"""Keras models in (the `keras` extra): HardwareAdapter.fit/evaluate on a tiny Keras CNN made
here, converted with TensorFlow's converters; TFLite int8 by ai-edge-quantizer and by TF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lepton_edge import HardwareAdapter  # the seed's import, as the README shows it
from lepton_edge.controller.factory import load_bundle
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import fashion_mnist
from lepton_edge.shared.manifest import ModelFormat
from tests.controller.factory.test_reference_bundle import run_plain

pytestmark = pytest.mark.slow
keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def tiny_cnn():  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = fashion_mnist("train")
    x = (x[:3000].astype(np.float32) / 255.0)[..., None]
    model.fit(x, y[:3000], epochs=1, batch_size=64, verbose=0)
    return model


@pytest.mark.parametrize("quantizer", ["ai-edge-quantizer", "tensorflow"])
def test_adapter_fit_and_evaluate(tiny_cnn, quantizer: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x_train, y_train = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")
    adapter = HardwareAdapter(
        tmp_path / "bundle",
        model_name="tiny-cnn",
        calibration_samples=200,
        holdout_samples=300,
        input_scale=1 / 255,
    )
    adapter.fit(tiny_cnn, x_train[:2000], y_train[:2000], tflite_quantizer=quantizer)
    manifest = adapter.manifest
    assert manifest is not None
    assert {v.id for v in manifest.variants} >= {
        "onnx-fp32", "onnx-fp16", "onnx-int8-dynamic", "tflite-fp32", "tflite-fp16",
        "tflite-int8-dynamic", "tflite-int8-weight-only",
    }  # fmt: skip
    load_bundle(tmp_path / "bundle", adapter.key.public_key())
    assert len(adapter.evaluate_results) == len(manifest.variants)

    rows = adapter.evaluate(x_test[:500], y_test[:500])
    assert rows is adapter.evaluate_results
    x = (x_test[:500].astype(np.float32) / 255.0)[..., None]
    keras_accuracy = float(np.mean(tiny_cnn.predict(x, verbose=0).argmax(1) == y_test[:500]))
    by_id = {r.id: r for r in rows}
    # The fp32 exports compute the Keras model's function: same predictions (+-1 on ties).
    for fp32 in ("onnx-fp32", "tflite-fp32"):
        assert by_id[fp32].accuracy == pytest.approx(keras_accuracy, abs=0.004)
    for variant in manifest.variants:
        path = tmp_path / "bundle" / variant.filename
        scores = run_plain(path, variant.format, x)
        row = by_id[variant.id]
        assert row.accuracy == pytest.approx(float(np.mean(scores.argmax(1) == y_test[:500])))
        assert row.size_bytes == path.stat().st_size
    # print(rows): a header and one aligned line per variant
    lines = str(rows).splitlines()
    assert lines[0].split()[:3] == ["variant", "status", "size"] and len(lines) == len(rows) + 1
    assert len({len(line) for line in lines}) == 1
    assert lines[1].startswith(rows[0].id) and f"{rows[0].accuracy:.4f}" in lines[1]
    static = manifest.variant("tflite-int8-static")
    assert static.inputs[0].dtype == "int8"
    expected = "tf_converter_int8_static" if quantizer == "tensorflow" else "static_wi8_ai8"
    assert static.scheme == expected
    assert manifest.variant("tflite-int8-dynamic").format is ModelFormat.TFLITE


def test_adapter_default_folder_stays_and_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO"):
        adapter = HardwareAdapter()
    assert adapter.bundle_dir == tmp_path / "lepton-bundle"  # not a temporary folder
    assert str(tmp_path / "lepton-bundle") in caplog.text
    monkeypatch.chdir("/")
    assert HardwareAdapter("rel").bundle_dir == Path("/rel")  # made absolute where created


def test_a_file_that_is_not_the_keras_models_export_is_refused(tiny_cnn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The source model is the reference: the committed Fashion-MNIST CNN handed in beside the
    tiny Keras model (a user's mix-up) computes another function."""
    from lepton_edge.controller.factory import build_bundle
    from lepton_edge.shared.signing import generate_key
    from tests.paths import FASHION_MNIST_MODELS

    x, y = fashion_mnist("t10k")
    with pytest.raises(UserError, match=r"model.onnx agrees with the Keras model on only") as info:
        build_bundle(
            tmp_path / "bundle",
            keras=tiny_cnn,
            onnx=FASHION_MNIST_MODELS / "model.onnx",
            calib_x=x[:100],
            eval_x=x[:300],
            eval_y=y[:300],
            key=generate_key(),
            model_name="mixed-up",
            input_scale=1 / 255,
        )
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_adapter_errors(tmp_path: Path) -> None:
    adapter = HardwareAdapter(tmp_path / "b")
    with pytest.raises(UserError, match="before evaluate"):
        adapter.evaluate(np.zeros((1, 28, 28)), np.zeros(1, int))
    with pytest.raises(UserError, match="is not a Keras model"):
        adapter.fit(object(), np.zeros((4, 28, 28)), np.zeros(4, int))
    with pytest.raises(UserError, match="4 samples but y_train 3"):
        adapter.fit(object(), np.zeros((4, 28, 28)), np.zeros(3, int))


def test_cli_with_a_keras_file(
    tiny_cnn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from lepton_edge.controller.cli import main
    from lepton_edge.shared.idx import FASHION_MNIST_DIR

    tiny_cnn.save(tmp_path / "tiny.keras")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    images = str(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    common = [
        "--calib",
        images,
        "--eval",
        images,
        "--eval-samples",
        "200",
        "--input-scale",
        "1/255",
    ]
    common += ["--key", str(tmp_path / "k.pem"), "--json"]
    skip = ["--skip", "onnx-fp16", "--skip", "tflite-fp16", "--skip", "tflite-int8-weight-only"]
    keras_file = ["--keras", str(tmp_path / "tiny.keras")]
    code = main(
        ["build", *keras_file, "--out", str(tmp_path / "b"), *common, *skip,
         "--tflite-quantizer", "tensorflow"]
    )  # fmt: skip
    assert code == 0
    manifest = load_bundle(tmp_path / "b")
    assert manifest.model_name == "tiny"
    assert manifest.variant("tflite-int8-dynamic").scheme == "tf_converter_int8_dynamic"
    assert manifest.variant("onnx-int8-static").status == "accepted"
    capsys.readouterr()
    broken = ["--keras", str(tmp_path / "broken.keras")]
    code = main(["build", *broken, "--out", str(tmp_path / "c"), *common])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is not a Keras model" in err and len(err.splitlines()) == 1
    not_keras = ["--onnx", str(tmp_path / "b" / "manifest.json")]
    code = main(
        ["build", *not_keras, "--out", str(tmp_path / "d"), "--tflite-quantizer", "tensorflow",
         *common]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs the Keras model" in err


def test_a_keras_model_that_will_not_convert_names_the_layer(tmp_path: Path) -> None:
    """An LSTM with a dynamic batch: TFLite's converter cannot lower its tensor lists."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((20, 8)), keras.layers.LSTM(16), keras.layers.Dense(4, activation="softmax")]
    )
    x = np.random.default_rng(0).random((40, 20, 8), dtype=np.float32)
    adapter = HardwareAdapter(tmp_path / "bundle", model_name="lstm")
    with pytest.raises(UserError) as caught:
        adapter.fit(model, x)
    text = str(caught.value)
    assert "could not convert the Keras model to TFLite: layer 'lstm' (LSTM)" in text, text
    assert "fixed batch" in text and "\n" not in text
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]
