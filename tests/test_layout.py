"""The package's shape: one namespace, rooms whose import contracts cover every module, and
extras that keep the ML toolchain off boxes that do not build variants."""

from __future__ import annotations

import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from tests.paths import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ML_TOOLCHAIN = {"onnx", "onnxruntime", "onnxconverter-common", "ai-edge-quantizer", "tensorflow"}
CONTROLLER_ROOMS = {"factory", "demo", "cli"}


def _contract(name: str) -> dict[str, list[str]]:
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"] == name)


def test_the_import_contracts_name_every_fleet_module() -> None:
    """A new module in controller/ must be placed in a room, or the contracts miss it."""
    folder = REPO / "controller"
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in folder.glob("*/__init__.py")}
    modules |= {p.parent.name for p in folder.glob("*/env.py")}  # migrations: no __init__
    fleet = {f"lepton_edge.controller.{m}" for m in modules - CONTROLLER_ROOMS}
    rooms = {f"lepton_edge.controller.{m}" for m in CONTROLLER_ROOMS}
    factory = _contract("the variant factory imports only shared")
    service = _contract(
        "the fleet service reaches the factory only through the optional build router"
    )
    assert set(factory["forbidden_modules"]) == fleet | rooms - {"lepton_edge.controller.factory"}
    assert set(service["source_modules"]) == fleet


def _closure(extras: set[str]) -> set[str]:
    """Every distribution `pip install 'lepton-edge[extras]'` brings, read from the installed
    metadata (the test venv has every extra installed)."""
    seen: set[str] = set()
    todo = [("lepton-edge", frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            key = req.name.lower().replace("_", "-")
            if key == "lepton-edge":
                todo.append((key, frozenset(req.extras)))
            elif key not in seen:
                seen.add(key)
                todo.append((key, frozenset(req.extras)))
    return seen


@pytest.mark.parametrize("extras", [{"agent", "litert"}, {"agent", "onnx"}, {"controller"}])
def test_edge_boxes_and_fleet_controllers_install_no_ml_toolchain(extras: set[str]) -> None:
    brought = _closure(extras)
    allowed = {"onnxruntime"} if "onnx" in extras else set()
    assert brought & ML_TOOLCHAIN <= allowed, sorted(brought & ML_TOOLCHAIN)


def test_the_factory_extra_brings_what_it_needs() -> None:
    brought = _closure({"factory"})
    assert {"onnx", "onnxruntime", "onnxconverter-common", "ai-edge-quantizer"} <= brought
    assert "fastapi" not in brought  # and not the fleet service


def test_only_the_namespace_package_is_installed() -> None:
    top = (metadata.distribution("lepton-edge").read_text("top_level.txt") or "").split()
    assert top == ["lepton_edge"], top
