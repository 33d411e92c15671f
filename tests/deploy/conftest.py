"""Fixtures for deployment tests: an offline systemd root that `systemd-analyze` can verify in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def make_system_root(root: Path) -> Path:
    """A directory `systemd-analyze verify --root` accepts: the host's unit library, merged /usr."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["cp", "-a", "/usr/lib/systemd/system", str(root / "usr/lib/systemd/")], check=True
    )
    for link in ("lib", "bin", "sbin"):
        if not (root / link).exists():
            (root / link).symlink_to(f"usr/{link}")
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )


def systemd_version() -> int:
    out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout
    return int(out.split()[1])
