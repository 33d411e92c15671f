"""`lepton demo` from an ordinary (non-editable) install, run outside the repository: everything
it reads at run time (reference models, dashboard files, migrations) must be in the wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.slow


def test_demo_runs_from_a_wheel_install_outside_the_checkout(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        check=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = wheels.glob("lepton_edge-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300
    )
    # One namespace: no generic `agent`, `controller` or `shared` beside other packages.
    installed = {p.name for p in site.iterdir()} - {"bin"}
    assert installed == {"lepton_edge", wheel.name.split("-py3")[0] + ".dist-info"}, installed
    # The installed copy, not the checkout, must be what runs (cwd outside the repository).
    env = {**os.environ, "PYTHONPATH": str(site), "TMPDIR": str(tmp_path)}
    where = subprocess.run(
        [sys.executable, "-c", "import lepton_edge.controller.demo.bundle as b; print(b.REFERENCE_DIR)"],
        capture_output=True, text=True, encoding="utf-8", check=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site)

    summary = tmp_path / "summary.json"
    code = "import sys; from lepton_edge.controller.cli import main; sys.exit(main())"
    demo = subprocess.run(
        [sys.executable, "-c", code, "demo", "--devices", "2", "--duration", "20", "--live", "off",
         "--summary-json", str(summary)],
        capture_output=True, text=True, encoding="utf-8", timeout=240, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    facts = json.loads(summary.read_text())
    assert facts["rollout"]["state"] == "completed", facts["rollout"]
    assert len(facts["devices"]) == 2
