"""One settings precedence for the agent and the controller: CLI flags > environment
(`LEPTON_AGENT_*`, `LEPTON_CONTROLLER_*`, nested with `__`) > TOML file > defaults.

Both settings classes derive from `LayeredSettings` and load through `load_layered`, which turns
every mistake (missing or invalid file, unknown key, bad value) into one-line `UserError`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from lepton_edge.shared.errors import UserError

S = TypeVar("S", bound="LayeredSettings")


class LayeredSettings(BaseSettings):
    """A settings model whose sources are flags (init kwargs), then env, then `toml_file`."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_layered(
    cls: type[S],
    config_file: Path | None,
    default_file: Path,
    overrides: Mapping[str, Any] | None = None,
) -> S:
    """`cls` from `config_file` (else `default_file` when it exists), the environment and
    `overrides` (flags; None values are left out, so an unset flag never hides a lower source)."""
    path = (
        config_file
        if config_file is not None
        else (default_file if default_file.exists() else None)
    )
    if path is not None:
        if not path.is_file():
            raise UserError(f"config file {path} does not exist: create it or pass --config")
        try:
            tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    prefix = str(cls.model_config.get("env_prefix", ""))
    where = f"{path} / {prefix}* / flags" if path else f"{prefix}* / flags"
    with_file: type[S] = type(
        cls.__name__,
        (cls,),
        {"model_config": SettingsConfigDict(**{**cls.model_config, "toml_file": path})},
    )
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return with_file(**flags)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        raise UserError(f"bad setting {field} (from {where}): {err['msg']}") from None
