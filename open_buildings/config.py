"""Typed configs loaded from YAML: one base class, one loader, one override syntax, one path rule.

Every config is a pydantic model with ``extra="forbid"`` (:class:`StrictModel`), so a typo in a
key is an error that names it, never a silent default. :func:`load_config` reads a YAML file (or
starts from the defaults), applies ``dotted.key=value`` overrides (values parsed as YAML, so
``3``, ``0.5``, ``true`` and ``[a, b]`` have their natural types; every command takes them as
``-o KEY=VALUE``) and validates the result.

Relative paths in a config (fields typed :data:`ConfigPath`) are resolved against the folder of
the YAML file, so a job config means the same thing from any working directory. Overrides are
read as if they were written in the file. A config built without a file keeps relative paths as
they are (relative to the working directory).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from open_buildings.errors import ConfigError
from open_buildings.remote import is_remote

T = TypeVar("T", bound=BaseModel)

#: The validation-context key holding the folder relative paths are resolved against.
BASE_DIR = "base_dir"


class StrictModel(BaseModel):
    """Base for configs: unknown keys are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(value: str | None, base: str | os.PathLike[str] | None) -> str | None:
    """Return ``value`` joined to ``base`` when it is a relative local path, else unchanged."""
    if value is None or base is None or is_remote(value) or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def _resolve_against_file(value: str | None, info: ValidationInfo) -> str | None:
    return resolve_path(value, (info.context or {}).get(BASE_DIR))


#: A path in a config file: relative paths are resolved against the file's folder.
ConfigPath = Annotated[str, AfterValidator(_resolve_against_file)]


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return ``data`` with each ``dotted.key=value`` override applied (value parsed as YAML).

    Raises:
        ConfigError: if an override is not of the form ``key=value``.
    """
    out = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
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


def validate_config(
    cls: type[T], data: dict[str, Any], *, source: str, base_dir: str | None = None
) -> T:
    """Validate a dict into ``cls``, resolving relative paths against ``base_dir``.

    Args:
        cls: the config class.
        data: keys and values (e.g. parsed YAML with overrides applied).
        source: where ``data`` came from, for messages.
        base_dir: the folder relative paths are resolved against; None leaves them.

    Raises:
        ConfigError: naming every wrong or unknown key, and the valid top-level keys.
    """
    try:
        return cls.model_validate(data, context={BASE_DIR: base_dir})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {what}")
        raise ConfigError(
            f"{source} is not a valid {cls.__name__}: {'; '.join(problems)}. "
            f"Valid keys: {', '.join(cls.model_fields)}"
        ) from None


def load_config(
    cls: type[T], path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()
) -> T:
    """Load a YAML file into ``cls``, with ``key=value`` overrides: the project's one loader.

    Args:
        cls: the pydantic model to validate against.
        path: the YAML file, or None to start from the model's defaults.
        overrides: ``key=value`` strings applied on top (nested keys as ``a.b=value``).

    Raises:
        ConfigError: naming the file and each bad key or value.
    """
    data: dict[str, Any] = {}
    source, base_dir = "defaults", None
    if path is not None:
        file = Path(path)
        source, base_dir = str(file), str(file.resolve().parent)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file} must hold a mapping of keys to values")
        data = loaded or {}
    return validate_config(cls, apply_overrides(data, overrides), source=source, base_dir=base_dir)


def dump_config(config: BaseModel) -> str:
    """Return the config as YAML (every field, defaults included; paths as resolved)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
