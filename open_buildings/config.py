"""Typed configs loaded from YAML: a typo in a key is an error, never a silent default.

Every config is a pydantic model with ``extra="forbid"``. :func:`load_config` reads a YAML file,
applies ``key.sub=value`` overrides (values parsed as YAML, so ``3``, ``0.5``, ``true`` and
``[a, b]`` have their natural types) and validates the result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from open_buildings.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for configs: unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return ``data`` with each ``dotted.key=value`` override applied (value parsed as YAML).

    Raises:
        ConfigError: if an override is not of the form ``key=value``.
    """
    out = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. steps=100)")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_config(
    cls: type[T], path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()
) -> T:
    """Load a YAML file into ``cls``, with overrides.

    Args:
        cls: the pydantic model to validate against.
        path: the YAML file, or None to start from the model's defaults.
        overrides: ``key=value`` strings applied on top.

    Raises:
        ConfigError: naming the file and each bad key or value.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values")
        data = loaded or {}
    data = apply_overrides(data, overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc


def dump_config(config: BaseModel) -> str:
    """Return the config as YAML (every field, defaults included)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
