"""The demo's model work: build the reference bundles, upload them, benchmark on devices, roll out.

The bundles are built by the variant factory from committed fp32 models (no TensorFlow):
for the fleet, the large Fashion-MNIST CNN and its distilled half-width student (one ladder
across model size and precision); for the camera device, the shapes detector, on images the
project renders itself. Without the Fashion-MNIST data set, calibration and
evaluation use synthetic images labelled by the fp32 model itself, so accuracy means
"agreement with fp32".
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.controller.demo.client import ControllerClient, wait_until
from lepton_edge.controller.demo.processes import die_with_parent
from lepton_edge.shared.errors import UserError
from lepton_edge.shared.manifest import MANIFEST_FILE, Manifest
from lepton_edge.shared.signing import load_or_create_private_key, public_pem

#: The committed reference models (made by examples/fashion_mnist/train.py), package data.
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
#: The fleet's model (`train.py --large`, 0.7 ms per image on one core) and its student.
FLEET_MODEL = (REFERENCE_DIR / "large.onnx", REFERENCE_DIR / "large.tflite")
FLEET_STUDENT = (REFERENCE_DIR / "large-student50.onnx", REFERENCE_DIR / "large-student50.tflite")
CALIBRATION_IMAGES = 200
#: The whole test split: on the first 2,000 images the student ties with the base model
#: (90.85 %), on all 10,000 it is 0.7 points behind, which is what the ladders should see.
EVALUATION_IMAGES = 10000
#: Each architecture's variants in the demo: fp32 and static int8 in both formats (the
#: other schemes are built the same way; leaving them out keeps the demo's setup short).
DEMO_VARIANTS = ("onnx-fp32", "onnx-int8-static", "tflite-fp32", "tflite-int8-static")


def prepare_key(state_dir: Path, public_out: Path) -> Path:
    """Create the controller's signing key where the controller looks for it; pin its public half."""
    key = load_or_create_private_key(state_dir / "keys" / "signing.pem")
    public_out.write_bytes(public_pem(key.public_key()))
    return public_out


def check_data_dir(path: Path) -> None:
    """Raise `UserError` unless `path` holds a readable Fashion-MNIST test split."""
    from lepton_edge.shared.idx import fashion_mnist

    if not path.is_dir():
        raise UserError(f"--data {path}: not a readable directory of Fashion-MNIST IDX files")
    images, labels = fashion_mnist("t10k", root=path)
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise UserError(f"--data {path}: t10k images and labels do not match")


def _dataset(data_dir: Path | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibration images, evaluation images, evaluation labels), (N, 28, 28, 1): the data
    set's uint8 pixels (scaled by the factory, 1/255, as the agents' pipeline then does),
    or synthetic float32 tensors."""
    if data_dir is not None:
        from lepton_edge.shared.idx import fashion_mnist

        train_x, _ = fashion_mnist("train", root=data_dir)
        test_x, test_y = fashion_mnist("t10k", root=data_dir)
        calib = train_x[:CALIBRATION_IMAGES][..., None]
        evalx = test_x[:EVALUATION_IMAGES][..., None]
        return calib, evalx, test_y[:EVALUATION_IMAGES].astype(np.int64)
    rng = np.random.default_rng(7)
    calib = rng.random((CALIBRATION_IMAGES, 28, 28, 1), dtype=np.float32)
    evalx = rng.random((EVALUATION_IMAGES, 28, 28, 1), dtype=np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(str(FLEET_MODEL[0]), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: evalx})[0]
    return calib, evalx, np.argmax(scores, axis=1).astype(np.int64)


def build(
    out_dir: Path,
    key_file: Path,
    data_dir: Path | None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Any:
    from lepton_edge.controller.factory import build_bundle
    from lepton_edge.controller.factory.build import ALL_VARIANTS
    from lepton_edge.controller.factory.evaluate import SpeedBudget
    from lepton_edge.shared.idx import FASHION_MNIST_LABELS
    from lepton_edge.shared.signing import load_private_key

    calib, evalx, evaly = _dataset(data_dir)
    return build_bundle(
        out_dir,
        onnx=FLEET_MODEL[0],
        tflite=FLEET_MODEL[1],
        architectures={"student50": FLEET_STUDENT},
        calib_x=calib,
        eval_x=evalx,
        eval_y=evaly,
        key=load_private_key(key_file.read_bytes()),
        # Synthetic evaluation measures agreement with fp32, not accuracy: say so in the name.
        model_name="fashion-mnist-demo" if data_dir is not None else "fashion-mnist-demo-synthetic",
        labels=list(FASHION_MNIST_LABELS),
        input_scale=1 / 255 if data_dir is not None else None,  # uint8 pixels in
        progress=progress,
        skip=[v for v in ALL_VARIANTS if v not in DEMO_VARIANTS],
        # Build-host timings are only a fallback: the devices measure for themselves.
        budget=SpeedBudget(min_runs=20, max_runs=200, seconds=0.2),
    )


def build_detector(
    out_dir: Path, key_file: Path, progress: Callable[[int, int, str], None] | None = None
) -> Any:
    """The shapes detector, described by its committed TOML, judged by mAP on rendered images."""
    from lepton_edge.controller.demo import shapes
    from lepton_edge.controller.factory import build_bundle
    from lepton_edge.controller.factory.build import ALL_VARIANTS
    from lepton_edge.controller.factory.evaluate import SpeedBudget
    from lepton_edge.shared.signing import load_private_key

    calib, _ = shapes.render(64, seed=3)
    images, boxes = shapes.render(200, seed=2)
    return build_bundle(
        out_dir,
        onnx=REFERENCE_DIR / "detector.onnx",
        tflite=REFERENCE_DIR / "detector.tflite",
        description=REFERENCE_DIR / "detector.toml",
        calib_x=calib,
        eval_x=images,
        eval_y=boxes,
        key=load_private_key(key_file.read_bytes()),
        model_name="shapes-detector-demo",
        labels=list(shapes.CLASSES),
        progress=progress,
        skip=[v for v in ALL_VARIANTS if v not in DEMO_VARIANTS],
        budget=SpeedBudget(min_runs=20, max_runs=200, seconds=0.2),
    )


class BuildProcess:
    """The bundle build in its own process: the controller keeps this process's GIL, native
    runtime logs go to a file instead of the terminal, and a Ctrl-C can stop it at once."""

    def __init__(
        self,
        out_dir: Path,
        key_file: Path,
        data_dir: Path | None,
        log: Path,
        detector: bool = False,
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "lepton_edge.controller.demo.bundle",
            str(out_dir),
            str(key_file),
        ]
        argv.append("detector" if detector else str(data_dir) if data_dir is not None else "-")
        self._log = open(log, "ab")  # noqa: SIM115 - closed in wait()
        # Its temp files (quantizer, timing children) go under the demo's dir, removed at the end.
        scratch = out_dir.parent / "tmp"
        scratch.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, "TMPDIR": str(scratch)},
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.log = log

    def progress(self) -> Iterator[str]:
        """Progress lines as the build prints them, until it ends."""
        assert self.proc.stdout is not None
        yield from (line.rstrip("\n") for line in self.proc.stdout)

    def wait(self) -> int:
        try:
            return self.proc.wait()
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def build_and_upload(
    client: ControllerClient,
    workdir: Path,
    data_dir: Path | None,
    notes: list[str],
    progress: Callable[[str], None] | None = None,
    started: Callable[[BuildProcess], None] | None = None,
    detector: bool = False,
) -> str:
    """Build a bundle (the Fashion-MNIST one, or the `detector`) with the controller's key in
    a child process, upload it (a tar.gz)."""
    name = "detector" if detector else "bundle"
    out = workdir / name
    began = time.monotonic()
    build = BuildProcess(
        out,
        workdir / "controller" / "keys" / "signing.pem",
        data_dir,
        workdir / f"{name}-build.log",
        detector=detector,
    )
    if started is not None:
        started(build)
    for line in build.progress():
        if progress is not None:
            progress(f"building the bundle: {line}")
    if build.wait() != 0:
        tail = build.log.read_text(errors="replace").strip().splitlines()[-1:]
        raise UserError(f"the bundle build failed: {' '.join(tail) or 'see ' + str(build.log)}")
    manifest = Manifest.model_validate_json((out / MANIFEST_FILE).read_text())
    accepted = [v.id for v in manifest.accepted()]
    notes.append(
        f"bundle {manifest.bundle_id}: {len(accepted)} of {len(manifest.variants)} variants "
        f"accepted, built in {time.monotonic() - began:.0f} s"
    )
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=1) as tar:
        for path in sorted(out.iterdir()):
            tar.add(path, arcname=path.name)
    client.post(
        "/bundles", content=archive.getvalue(), headers={"Content-Type": "application/gzip"}
    )
    return str(manifest.bundle_id)


def benchmark(client: ControllerClient, bundle_id: str, iterations: int = 30) -> int:
    """Ask one device per hardware class to time every accepted variant; wait for all results.

    Returns how many hardware classes were measured."""
    sent = client.post("/benchmarks", json={"bundle_id": bundle_id, "iterations": iterations})
    classes = {s["hardware_class"] for s in sent if s.get("hardware_class")}

    def measured() -> bool:
        rows = client.get("/benchmarks", bundle_id=bundle_id)
        return classes <= {r["hardware_class"] for r in rows}

    wait_until(measured, 120, f"on-device benchmarks from {len(classes)} hardware classes")
    return len(classes)


def start_rollout(
    client: ControllerClient, bundle_id: str, waves: list[float], device_ids: list[str]
) -> str:
    """A staged rollout of the bundle to these devices, in cumulative waves (percent)."""
    target = {"device_ids": device_ids}
    rollout = client.post(
        "/rollouts", json={"bundle_id": bundle_id, "target": target, "waves": waves}
    )
    return str(rollout["id"])


def main(argv: list[str]) -> int:
    """`python -m lepton_edge.controller.demo.bundle OUT_DIR KEY_FILE DATA_DIR|-|detector`:
    what `BuildProcess` runs."""
    out, key, data = Path(argv[0]), Path(argv[1]), argv[2]
    # SIGTERM unwinds like Ctrl-C, so temporary directories are cleaned up on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def report(done: int, total: int, what: str) -> None:
        print(f"{what} ({done}/{total})", flush=True)

    if data == "detector":
        build_detector(out, key, report)
    else:
        build(out, key, None if data == "-" else Path(data), report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
