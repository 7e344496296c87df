"""Encoder files: a building model's encoder weights alone, as ``ob-pretrain`` writes them.

An encoder file is a safetensors file with a sha256 sidecar, like a checkpoint, whose metadata
says ``kind: encoder`` and names the model (and config) the encoder belongs to; its tensors are
``net.encoder``'s state dict. ``ob-train``, ``ob-pretrain`` and ``ob-vtab`` load it through
:func:`init_encoder`, the one reader of ``init_from``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open

from open_buildings.errors import CheckpointError, ConfigError
from open_buildings.models.base import BuildingModel
from open_buildings.models.checkpoint import ENCODER_KIND, FORMAT_VERSION, write_safetensors
from open_buildings.models.checkpoint_meta import file_sha256, read_sidecar
from open_buildings.models.registry import config_to_dict, load_pretrained, resolve_config


def save_encoder(
    model: BuildingModel, path: str | os.PathLike[str], *, extra: dict[str, str] | None = None
) -> str:
    """Write ``model.net.encoder``'s weights to ``path`` (+ ``.sha256``); return the sha256.

    Args:
        model: the model whose encoder was trained.
        path: the ``.safetensors`` file to write; its folder must exist.
        extra: more string metadata (the objective, the data, the steps).
    """
    tensors = {
        k: v.detach().to("cpu").contiguous() for k, v in model.net.encoder.state_dict().items()
    }
    metadata = {
        "format_version": FORMAT_VERSION,
        "kind": ENCODER_KIND,
        "name": model.name,
        "config": json.dumps(model.config, sort_keys=True),
        **(extra or {}),
    }
    return write_safetensors(Path(path), tensors, metadata)


def is_encoder_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file that ``save_encoder`` wrote."""
    if not str(path).endswith(".safetensors") or not Path(path).is_file():
        return False
    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("kind") == ENCODER_KIND
    except Exception:  # not safetensors: the family's own loader will say what is wrong
        return False


def load_encoder(model: BuildingModel, path: str | os.PathLike[str]) -> dict[str, int]:
    """Load an encoder file into ``model.net.encoder`` (sha256 sidecar checked first).

    Returns:
        ``{"loaded": number of tensors}``.

    Raises:
        CheckpointError: the sha256 does not match, the encoder belongs to another model, or
            its tensors do not fit.
    """
    path = Path(path)
    if file_sha256(path) != read_sidecar(path).strip().lower():
        raise CheckpointError(f"sha256 mismatch for {path}; copy the encoder file again")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("name") != model.name or not _same_encoder(
        model, json.loads(meta.get("config", "{}"))
    ):
        raise CheckpointError(
            f"{path} is the encoder of {meta.get('name')!r} (config {meta.get('config')}), not "
            f"of {model.name!r}; set model: {meta.get('name')} in the config"
        )
    try:
        model.net.encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit {model.name}'s encoder: {exc}") from exc
    return {"loaded": len(state)}


def _same_encoder(model: BuildingModel, stored: dict) -> bool:
    """Whether an encoder file's config builds ``model``'s encoder: the stored config with the
    registry's defaults for fields added since (``resolve_config``), compared without the
    decoder's fields (``decoder_*``), which an encoder does not depend on."""
    try:
        full = config_to_dict(resolve_config(model.name, **stored))
    except ConfigError:
        return False

    def encoder_part(config: dict) -> dict:
        return {k: v for k, v in config.items() if not k.startswith("decoder_")}

    return encoder_part(full) == encoder_part(model.config)


def init_encoder(model: BuildingModel, source: str | os.PathLike[str]) -> dict[str, int]:
    """Initialise ``model``'s encoder from ``init_from``: an encoder file, or the family's
    official weights (``registry.load_pretrained``: a checkpoint file, or ``imagenet``)."""
    if is_encoder_file(source):
        return load_encoder(model, source)
    return load_pretrained(model, source)
