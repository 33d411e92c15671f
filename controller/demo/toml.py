"""A minimal TOML writer for the agent configs the demo generates (tomllib only reads).

Handles what those configs contain: nested tables of strings, numbers, booleans and lists.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))  # JSON string escapes are valid TOML basic strings
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _tables(data: Mapping[str, Any], name: str) -> list[str]:
    scalars = [
        f"{k} = {_value(v)}"
        for k, v in data.items()
        if v is not None and not isinstance(v, Mapping)
    ]
    blocks = (
        [("\n".join([f"[{name}]", *scalars]) if name else "\n".join(scalars))]
        if scalars or name
        else []
    )
    for k, v in data.items():
        if isinstance(v, Mapping):
            blocks += _tables(v, f"{name}.{k}" if name else k)
    return blocks


def dumps(data: Mapping[str, Any]) -> str:
    """TOML text for `data`; `None` values are left out (TOML has no null)."""
    return "\n\n".join(b for b in _tables(data, "") if b) + "\n"
