"""`lepton build` end to end: IDX data in, bundle and table/JSON out, one-line errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from lepton_edge.controller.cli import main
from lepton_edge.controller.factory import load_bundle
from lepton_edge.shared.idx import FASHION_MNIST_DIR
from lepton_edge.shared.signing import load_or_create_private_key
from tests.controller.factory import tiny
from tests.paths import FASHION_MNIST_MODELS

REFERENCE = FASHION_MNIST_MODELS


def test_build_json_from_idx_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "keys" / "signing.pem"
    code = main(
        [
            "build",
            "--tflite", str(REFERENCE / "model.tflite"),
            "--calib", str(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"),
            "--eval", str(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"),
            "--eval-samples", "300",
            "--input-scale", "1/255",
            "--skip", "tflite-int8-weight-only",
            "--labels", "fashion-mnist",
            "--out", str(tmp_path / "bundle"),
            "--key", str(key),
            "--json",
        ]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    public = load_or_create_private_key(key).public_key()  # created by the build
    manifest = load_bundle(tmp_path / "bundle", public)
    assert printed == manifest.model_dump(mode="json")
    assert [v.id for v in manifest.variants] == [
        "tflite-fp32",
        "tflite-fp16",
        "tflite-int8-static",
        "tflite-int8-dynamic",
    ]
    assert manifest.model_name == "model" and manifest.labels[9] == "Ankle boot"


def test_build_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny.make_onnx(tmp_path / "tiny.onnx")
    x, y = tiny.data(300)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ["build", "--onnx", str(model), "--calib", str(tmp_path / "x.npy")]
    args += ["--eval", str(tmp_path / "x.npy"), "--eval-labels", str(tmp_path / "y.npy")]
    args += ["--out", str(tmp_path / "b"), "--key", str(tmp_path / "k.pem"), "--name", "tiny"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for variant in ("onnx-fp32", "onnx-fp16", "onnx-int8-static", "onnx-int8-dynamic"):
        assert variant in out
    assert "accepted" in out and "1.0000" in out


def test_build_with_a_smaller_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--architecture NAME=S.onnx,S.tflite` puts a second model into the same bundle (here
    the large reference's student beside the seed CNN: the same inputs and outputs)."""
    student = [REFERENCE / f"large-student50.{suffix}" for suffix in ("onnx", "tflite")]
    code = main(
        [
            "build",
            "--onnx", str(REFERENCE / "model.onnx"),
            "--tflite", str(REFERENCE / "model.tflite"),
            "--architecture", f"student50={student[0]},{student[1]}",
            "--calib", str(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"),
            "--eval", str(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"),
            "--eval-samples", "300",
            "--input-scale", "1/255",
            *(f"--skip={v}" for v in ("onnx-fp16", "onnx-int8-dynamic", "openvino-int8")),
            *(f"--skip={v}" for v in ("tflite-fp16", "tflite-int8-dynamic", "tflite-int8-weight-only")),
            "--out", str(tmp_path / "bundle"),
            "--key", str(tmp_path / "k.pem"),
            "--json",
        ]
    )  # fmt: skip
    assert code == 0
    variants = json.loads(capsys.readouterr().out)["variants"]
    by_id = {v["id"]: v for v in variants}
    assert by_id["student50-tflite-fp32"]["architecture"] == "student50"
    assert by_id["student50-onnx-int8-static"]["macs"] == 9268928
    assert by_id["onnx-fp32"]["architecture"] == "base"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--calib", "x.npy", "--eval", "x.npy", "--eval-labels", "y.npy"], "give a model"),
        (
            [
                "--onnx",
                "README.md",
                "--calib",
                "x.npy",
                "--eval",
                "x.npy",
                "--eval-labels",
                "y.npy",
            ],
            "is not a valid ONNX model",
        ),
        (
            ["--onnx", "m.onnx", "--calib", "x.npy", "--eval", "x.npy", "--task", "captioning"],
            "unknown task 'captioning'",
        ),
        (
            ["--onnx", "m.onnx", "--calib", "x.npy", "--eval", "x.npy", "--describe", "d.toml"],
            "model description d.toml is not valid TOML/JSON",
        ),
        (
            [
                "--onnx",
                "m.onnx",
                "--calib",
                "empty.npy",
                "--eval",
                "x.npy",
                "--eval-labels",
                "y.npy",
            ],
            "calibration data is empty",
        ),
        (
            ["--onnx", "m.onnx", "--calib", "x.npy", "--eval", "x.npy", "--eval-labels", "bad.npy"],
            "out of range",
        ),
        (  # integer pixels: 0..1 or 0..255 cannot be guessed
            ["--onnx", "m.onnx", "--calib", "u8.npy", "--eval", "x.npy", "--eval-labels", "y.npy"],
            "calibration data is uint8: say how the model wants it scaled, --input-scale 1/255",
        ),
        (
            ["--onnx", "m.onnx", "--calib", "x.npy", "--eval", "x.npy", "--input-scale", "0"],
            "--input-scale: '0' must be positive",
        ),
        (
            [
                "--onnx",
                "m.onnx",
                "--calib",
                "x.npy",
                "--eval",
                "x.npy",
                "--architecture",
                "s=x.npy",
            ],
            "--architecture 's=x.npy': use NAME=S.onnx",
        ),
        (
            [
                "--onnx",
                "m.onnx",
                "--calib",
                "x.npy",
                "--eval",
                "x.npy",
                "--architecture",
                "s=n.onnx",
            ],
            "architecture s: model file n.onnx does not exist",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("# not a model\n")
    (tmp_path / "d.toml").write_text("task = \n")
    tiny.make_onnx(tmp_path / "m.onnx")
    x, y = tiny.data(20)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "empty.npy", x[:0])
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "bad.npy", y + 10)
    np.save(tmp_path / "u8.npy", (x * 255).astype(np.uint8))
    code = main(["build", *argv, "--out", "bundle", "--key", "k.pem"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and err.startswith("lepton: error:")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]


def test_build_without_the_factory_extra_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)  # a fleet-only install
    out = tmp_path / "bundle"
    model = str(REFERENCE / "model.tflite")
    assert main(["build", "--tflite", model, "--calib", "x", "--eval", "x", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'lepton-edge[factory]'" in err, err
    assert "ai_edge_quantizer" in err and not out.exists()


def test_relative_paths_work_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's `--out bundle/`, run outside the repository (the measuring child process
    runs in another directory, so nothing may stay relative)."""
    monkeypatch.chdir(tmp_path)
    images = FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"
    shutil.copy(REFERENCE / "model.tflite", tmp_path / "model.tflite")
    skip = ["tflite-fp16", "tflite-int8-static", "tflite-int8-dynamic", "tflite-int8-weight-only"]
    code = main(
        ["build", "--tflite", "model.tflite", "--calib", str(images), "--eval", str(images),
         "--eval-samples", "200", "--input-scale", "1/255", "--labels", "fashion-mnist", "--out", "bundle/",
         "--key", "keys/signing.pem", *[a for v in skip for a in ("--skip", v)]]
    )  # fmt: skip
    assert code == 0
    public = load_or_create_private_key(tmp_path / "keys/signing.pem").public_key()
    assert [v.id for v in load_bundle(tmp_path / "bundle", public).variants] == ["tflite-fp32"]
