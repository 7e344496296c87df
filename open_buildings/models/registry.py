"""Segmentation models by name, as timm's registry does it.

Every model registers a :class:`ModelEntry`; :func:`build_model` turns a name and config overrides
into a :class:`~open_buildings.models.base.BuildingModel`, and :func:`load_pretrained` fills it
with its family's official weights through the entry's own loader. An unknown name or config key
is a :class:`~open_buildings.errors.ConfigError` that lists the valid choices.

This module imports no model family: the families register themselves when the package imports
them (``open_buildings.models.register_builtin_families``), which the lookups here ask for first.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from open_buildings.errors import CheckpointError, ConfigError
from open_buildings.models.base import BuildingModel, InputSpec

__all__ = [
    "InputSpec",
    "ModelEntry",
    "build_model",
    "config_to_dict",
    "describe_models",
    "format_models_table",
    "get_entry",
    "list_models",
    "load_pretrained",
    "register",
    "register_family",
]


#: ``loader(model, source) -> report``; see :attr:`ModelEntry.load_pretrained`.
PretrainedLoader = Callable[[BuildingModel, str], dict[str, int]]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: Registry name, e.g. ``"unet_resnet34"``.
        builder: Called with the resolved config (same type as ``default_config``); returns the
            network that maps normalised ``(B, bands, H, W)`` to ``(B, C, H, W)`` logits.
        default_config: A frozen dataclass instance or a dict; its fields are the only keys
            ``build_model`` accepts as overrides.
        input_spec: The input contract (bands, normalisation, divisor, pixel size).
        output_channels: Names of the output channels, in order.
        description: One line for listings.
        load_pretrained: ``loader(model, source) -> report`` copies official weights into a
            model built from this entry, in place, and returns counts such as
            ``{"loaded": n, "unused": m}``; ``source`` is a local file, or ``"imagenet"`` for
            weights a package ships. None when the family has no official weights.
    """

    name: str
    builder: Callable[[Any], nn.Module]
    default_config: Any
    input_spec: InputSpec
    output_channels: tuple[str, ...]
    description: str
    load_pretrained: PretrainedLoader | None = None


_REGISTRY: dict[str, ModelEntry] = {}
#: The source that names weights shipped inside a package rather than a file.
PACKAGED_WEIGHTS = "imagenet"


def register(entry: ModelEntry) -> ModelEntry:
    """Add a model to the registry.

    Args:
        entry: The model entry. Its name must not be registered already.

    Returns:
        The entry, so this can be used inline.
    """
    if not isinstance(entry, ModelEntry):
        raise TypeError(f"register() takes a ModelEntry, got {type(entry).__name__}")
    if entry.name in _REGISTRY:
        raise ConfigError(f"model {entry.name!r} is already registered")
    if not (
        dataclasses.is_dataclass(entry.default_config) or isinstance(entry.default_config, dict)
    ):
        raise TypeError(
            f"model {entry.name!r}: default_config must be a dataclass instance or a dict, "
            f"got {type(entry.default_config).__name__}"
        )
    _REGISTRY[entry.name] = entry
    return entry


def register_family(
    models: Iterable[tuple[str, Any, str]],
    builder: Callable[[Any], nn.Module],
    *,
    input_spec: InputSpec | Callable[[Any], InputSpec],
    output_channels: tuple[str, ...],
    load_pretrained: PretrainedLoader | None = None,
) -> list[ModelEntry]:
    """Register several models that share a builder: one family, in several sizes.

    Args:
        models: ``(name, default_config, description)`` per model.
        builder: Builds the network from a config (see :attr:`ModelEntry.builder`).
        input_spec: The input contract of every model, or a function of the default config
            that returns it (e.g. when the divisor is the config's patch size).
        output_channels: Names of the output channels, in order.
        load_pretrained: The family's official-weights loader (see
            :attr:`ModelEntry.load_pretrained`).

    Returns:
        The registered entries, in the order given.
    """
    entries = []
    for name, config, description in models:
        spec = input_spec if isinstance(input_spec, InputSpec) else input_spec(config)
        entry = ModelEntry(
            name=name,
            builder=builder,
            default_config=config,
            input_spec=spec,
            output_channels=output_channels,
            description=description,
            load_pretrained=load_pretrained,
        )
        entries.append(register(entry))
    return entries


def _ensure_builtin_models() -> None:
    import open_buildings.models as package  # the package knows its families; this module not

    package.register_builtin_families()


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    _ensure_builtin_models()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """Look up a registered model.

    Args:
        name: Registry name.

    Returns:
        The entry.

    Raises:
        ConfigError: ``name`` is not registered; the message lists the valid names.
    """
    _ensure_builtin_models()
    entry = _REGISTRY.get(name)
    if entry is None:
        valid = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(name), valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown model {name!r}.{hint} Valid models: {', '.join(valid)} (see `ob-models`)"
        )
    return entry


def _valid_keys(config: Any) -> list[str]:
    if isinstance(config, dict):
        return list(config)
    return [f.name for f in dataclasses.fields(config)]


def _coerce(default: Any, value: Any) -> Any:
    # JSON turns tuples into lists; give the builder the type its default has.
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def resolve_config(name: str, **overrides: Any) -> Any:
    """Apply overrides to a model's default config.

    Args:
        name: Registry name.
        **overrides: Config fields to change.

    Returns:
        The config, of the same type as the entry's ``default_config``.

    Raises:
        ConfigError: An override key is not a field of the config.
    """
    entry = get_entry(name)
    default = entry.default_config
    valid = _valid_keys(default)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise ConfigError(
            f"model {name!r} has no config key {', '.join(hints)}; valid keys: {', '.join(valid)}"
        )
    if isinstance(default, dict):
        return {k: _coerce(default[k], overrides.get(k, default[k])) for k in valid}
    changes = {k: _coerce(getattr(default, k), v) for k, v in overrides.items()}
    return dataclasses.replace(default, **changes)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Turn a config (dataclass or dict) into a plain JSON-serialisable dict.

    Args:
        config: A dataclass instance or dict.

    Returns:
        A dict whose tuples became lists.
    """
    raw = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in raw.items()}


def build_model(name: str, **overrides: Any) -> BuildingModel:
    """Build a registered model with random (or builder-chosen offline) weights.

    Args:
        name: Registry name (see :func:`list_models`).
        **overrides: Config fields to change from the entry's defaults.

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: Unknown name or unknown config key.
    """
    entry = get_entry(name)
    config = resolve_config(name, **overrides)
    net = entry.builder(config)
    return BuildingModel(
        net,
        name=entry.name,
        config=config_to_dict(config),
        input_spec=entry.input_spec,
        output_channels=entry.output_channels,
    )


def _build_for_counting(name: str) -> BuildingModel:
    # On the meta device a 400M-parameter model costs neither memory nor initialisation time; a
    # builder that needs real tensors (smp's MiT calls .item()) is small enough to build for real.
    try:
        with torch.device("meta"):
            return build_model(name)
    except (RuntimeError, NotImplementedError):
        return build_model(name)


def describe_models() -> list[dict[str, Any]]:
    """Describe every registered model (each is built on the meta device to count parameters).

    Returns:
        One dict per model with ``name``, ``params``, ``channels``, ``bands``, ``divisor`` and
        ``description``.
    """
    rows = []
    for name in list_models():
        entry = _REGISTRY[name]
        model = _build_for_counting(name)
        rows.append(
            {
                "name": name,
                "params": model.num_parameters(),
                "channels": list(entry.output_channels),
                "bands": entry.input_spec.bands,
                "divisor": entry.input_spec.divisor,
                "description": entry.description,
            }
        )
    return rows


def format_models_table(rows: list[dict[str, Any]] | None = None) -> str:
    """Render :func:`describe_models` as a fixed-width text table.

    Args:
        rows: Output of :func:`describe_models`; computed when omitted.

    Returns:
        The table, one model per line after a header.
    """
    rows = describe_models() if rows is None else rows
    header = f"{'name':<26} {'params':>8}  {'channels':<20} description"
    lines = [header, "-" * len(header)]
    for r in rows:
        params = f"{r['params'] / 1e6:.2f}M"
        lines.append(
            f"{r['name']:<26} {params:>8}  {','.join(r['channels']):<20} {r['description']}"
        )
    return "\n".join(lines)


def load_pretrained(model: BuildingModel, source: str | os.PathLike[str]) -> dict[str, int]:
    """Initialise ``model`` from its family's official weights, through its entry's loader.

    Args:
        model: A model built from a registered entry (its name picks the loader).
        source: A local checkpoint file in a layout the family reads, or ``"imagenet"`` for
            weights shipped in a package (EfficientNet-Lite0).

    Returns:
        The loader's report (tensors loaded, and source tensors left unused).

    Raises:
        CheckpointError: The family has no loader, the file is missing, or it does not fit.
    """
    entry = get_entry(model.name)
    if entry.load_pretrained is None:
        known = sorted(n for n, e in _REGISTRY.items() if e.load_pretrained is not None)
        raise CheckpointError(
            f"model {model.name!r} has no official weights to load (models that do: "
            f"{', '.join(known)}); train it from random weights (drop init_from)"
        )
    if str(source) != PACKAGED_WEIGHTS and not Path(source).is_file():
        raise CheckpointError(f"backbone checkpoint {source} does not exist; pass a local file")
    return entry.load_pretrained(model, str(source))
