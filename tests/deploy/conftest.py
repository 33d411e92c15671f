"""Fixtures for deployment tests: real controller processes, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import ControllerProcess


@pytest.fixture
def controller_factory(tmp_path: Path) -> Iterator[Callable[..., ControllerProcess]]:
    started: list[ControllerProcess] = []

    def make(settings: dict[str, Any] | None = None, **start: Any) -> ControllerProcess:
        controller = ControllerProcess(tmp_path / f"controller{len(started)}", settings or {})
        started.append(controller)
        return controller.start(**start)

    yield make
    for controller in started:
        controller.stop()
