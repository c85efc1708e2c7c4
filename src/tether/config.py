"""Typed settings from `tether.toml` and `TETHER_*` environment variables; read only by the CLI/server."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.errors import ConfigurationError

DEFAULT_CONFIG_FILE = "tether.toml"
ENV_PREFIX = "TETHER_"


class Settings(BaseModel):
    """What a tether process needs to know; every field can come from the file or the environment."""

    model_config = ConfigDict(extra="forbid")

    db: str = Field(default="sqlite:///tether.db", description="run store URL")
    lease_s: float = Field(default=30.0, gt=0, description="worker lease length in seconds")
    concurrency: int = Field(default=4, ge=1, description="runs a worker drives at once")
    model: str | None = Field(default=None, description="default model spec for runs")


def load_settings(
    config_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Merge, lowest first: defaults, the TOML file, TETHER_* variables, explicit overrides.

    Errors name the offending key and where it came from, e.g. `TETHER_LEASE_S='x'`.
    """
    import os

    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = Path(config_file) if config_file is not None else Path(DEFAULT_CONFIG_FILE)
    if config_file is not None and not path.exists():
        raise ConfigurationError(f"config file {str(path)!r} does not exist")
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
        section = data.get("tether", data)
        for key, value in section.items():
            values[key] = value
            sources[key] = f"{path}: {key}"
    for field in Settings.model_fields:
        name = ENV_PREFIX + field.upper()
        if name in environ:
            values[field] = environ[name]
            sources[field] = name
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
            sources[key] = f"--{key.replace('_', '-')}"
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        where = sources.get(key, key)
        if err["type"] == "extra_forbidden":
            known = ", ".join(Settings.model_fields)
            raise ConfigurationError(f"unknown setting {where!r}; known settings: {known}") from None
        raise ConfigurationError(f"invalid setting {where}={err['input']!r}: {err['msg']}") from None
