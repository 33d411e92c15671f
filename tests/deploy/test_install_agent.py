"""deploy/install-agent.sh in a temp root, up to where systemd would start the agent: user,
venv with the agent from this checkout, enrollment with a real controller, unit verified and
enabled; then the same again (idempotent), an upgrade, and --uninstall.

Offline: pip installs the project from a copy of this checkout with `--no-deps`, and the
dependencies pip would download come from the test venv through PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from lepton_edge.agent.config import load_settings
from tests.deploy.support import (
    DEPLOY,
    REPO,
    ControllerProcess,
    make_system_root,
    systemd_version,
    verify,
)

INSTALL = DEPLOY / "install-agent.sh"
PIP_OFFLINE = "--no-deps --no-index --no-build-isolation"
UNIT = "etc/systemd/system/lepton-agent.service"
ENABLED = "etc/systemd/system/multi-user.target.wants/lepton-agent.service"

pytestmark = pytest.mark.slow


def install(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        [str(INSTALL), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        env=env,
        check=False,
        cwd="/",
    )


def source_copy(dest: Path, version: str = "0.1.0") -> Path:
    """The project as a release would ship it (no .venv, no caches), at `version`."""
    dest.mkdir(parents=True)
    for name in ("lepton_edge", "agent", "controller", "shared"):
        shutil.copytree(
            REPO / name, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "README.md", dest)
    pyproject = (REPO / "pyproject.toml").read_text()
    (dest / "pyproject.toml").write_text(
        pyproject.replace('version = "0.1.0"', f'version = "{version}"')
    )
    init = dest / "shared/__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', f'__version__ = "{version}"'))
    return dest


def one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], result.stderr


@pytest.fixture
def controller(controller_factory: Callable[..., ControllerProcess]) -> ControllerProcess:
    return controller_factory(
        {
            "mqtt": {
                "enabled": False,
                "public_host": "broker.example",
                "public_port": 8883,
                "tls": True,
            }
        }
    )


def test_install_upgrade_uninstall_in_a_temp_root(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the installer sets file ownership (root), even under --root")
    root = make_system_root(tmp_path / "root")
    certs = tmp_path / "certs"
    subprocess.run(
        [str(DEPLOY / "broker/make-certs.sh"), "ca", str(certs)], check=True, capture_output=True
    )
    src = source_copy(tmp_path / "src-0.1.0")
    common = (
        "--root",
        str(root),
        "--source",
        str(src),
        "--pip-args",
        PIP_OFFLINE,
        "--python",
        sys._base_executable,
    )  # type: ignore[attr-defined]

    result = install(
        *common,
        "--controller",
        controller.url,
        "--token",
        controller.enroll_token(),
        "--device-id",
        "box-1",
        "--ca-file",
        str(certs / "ca.pem"),
    )
    assert result.returncode == 0, result.stdout + result.stderr

    # The user, from sysusers, in the GPU groups.
    group = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/group").read_text().splitlines()
    }
    assert "lepton" in group["video"][3].split(",") and "lepton" in group["render"][3].split(",")
    gid = int(group["lepton"][2])

    # The venv, with the agent from this checkout (not from the test venv).
    venv = root / "opt/lepton/venv"
    where = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import lepton_edge.agent as a, lepton_edge as le; print(a.__file__, le.__version__)",
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=True,
        env={**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]},
        cwd=tmp_path,  # not the checkout: `python -c` looks in the current directory first
    ).stdout.split()
    assert where[0].startswith(str(venv)) and where[1] == "0.1.0"

    # Enrolled: the config (paths as the agent will see them), readable by the agent's group.
    config = root / "etc/lepton/agent.toml"
    settings = load_settings(config)
    assert settings.device_id == "box-1" and settings.mqtt.host == "broker.example"
    assert settings.mqtt.ca_file == Path("/etc/lepton/ca.pem")
    assert settings.controller_key_path() == Path("/etc/lepton/controller.pem")
    assert (root / "etc/lepton/ca.pem").read_bytes() == (certs / "ca.pem").read_bytes()
    stat = config.stat()
    assert (stat.st_mode & 0o777, stat.st_gid) == (0o640, gid)

    # The unit: installed, verified with the real installed binary, enabled for boot.
    assert (root / UNIT).read_bytes() == (DEPLOY / "systemd/lepton-agent.service").read_bytes()
    checked = verify(root, "lepton-agent.service")
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    assert os.readlink(root / ENABLED) == "/" + UNIT
    backoff = root / "etc/systemd/system/lepton-agent.service.d/restart-backoff.conf"
    assert backoff.exists() == (systemd_version() >= 254)

    # Again, without a token: nothing changes, the enrollment stays.
    python_inode = (venv / "bin/python").lstat().st_ino
    before = config.read_bytes()
    again = install(*common)
    assert again.returncode == 0, again.stderr
    assert "keeping the enrollment" in again.stdout
    assert config.read_bytes() == before and (venv / "bin/python").lstat().st_ino == python_inode

    # Upgrading the agent itself: the same command with the new release.
    newer = source_copy(tmp_path / "src-0.1.1", version="0.1.1")
    upgrade = install(*common[:2], "--source", str(newer), *common[4:])
    assert upgrade.returncode == 0, upgrade.stderr
    assert "lepton-agent 0.1.1" in upgrade.stdout
    assert config.read_bytes() == before

    # Uninstall keeps the enrollment, and the venv while a controller on this host uses it.
    controller_unit = root / "etc/systemd/system/lepton-controller.service"
    shutil.copy(DEPLOY / "systemd/lepton-controller.service", controller_unit)
    kept = install("--root", str(root), "--uninstall")
    assert kept.returncode == 0, kept.stderr
    assert not (root / UNIT).exists() and (venv / "bin/lepton-controller").exists()
    controller_unit.unlink()
    removed = install("--root", str(root), "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (root / UNIT).exists() and not (root / ENABLED).is_symlink()
    assert not (root / "opt/lepton").exists() and config.exists()
    purged = install("--root", str(root), "--uninstall", "--purge")
    assert purged.returncode == 0 and not (root / "etc/lepton").exists()


def test_installer_refuses_bad_input_in_one_line(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    one_line_error(install("--root", str(root)), "not enrolled yet")
    one_line_error(install("--root", str(root), "--token", "x"), "--token needs --controller")
    one_line_error(install("--root", str(tmp_path / "missing")), "not a directory")
    one_line_error(install("--root", str(root), "--bogus"), "unknown option")
    one_line_error(
        install(
            "--root",
            str(root),
            "--controller",
            controller.url,
            "--token",
            "x",
            "--runtimes",
            "cuda",
        ),
        "unknown runtime",
    )
    one_line_error(install("--root", str(root), "--purge"), "--purge only goes with --uninstall")
    one_line_error(
        install(
            "--root",
            str(root),
            "--controller",
            controller.url,
            "--token",
            "x",
            "--python",
            "/nonexistent/python3",
        ),
        "not found",
    )
    assert not (root / "etc/lepton").exists() and not (root / "opt").exists()


def test_a_refused_token_enables_nothing(controller: ControllerProcess, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the installer sets file ownership (root), even under --root")
    root = tmp_path / "root"
    root.mkdir()
    src = source_copy(tmp_path / "src")
    result = install(
        "--root",
        str(root),
        "--source",
        str(src),
        "--pip-args",
        PIP_OFFLINE,
        "--python",
        sys._base_executable,  # type: ignore[attr-defined]
        "--controller",
        controller.url,
        "--token",
        "lep_wrong-token-123",
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "refused the enrollment" in errors[0], result.stderr
    assert not (root / "etc/lepton/agent.toml").exists()
    assert not (root / UNIT).exists() and not (root / ENABLED).exists()
    assert tomllib  # the config module is still importable for the next try
