"""Model checkpoints: safetensors weights, the model's name and config, and a sha256 sidecar.

A checkpoint is one ``.safetensors`` file whose metadata holds everything needed to rebuild the
model (``name``, ``config``, ``input_spec``, ``output_channels``, ``format_version``), plus a
``<file>.sha256`` sidecar in ``sha256sum`` format. Loading never runs code from the file:
safetensors holds tensors only, and the architecture comes from the registry.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from open_buildings.errors import CheckpointError, ConfigError
from open_buildings.models.base import BuildingModel, InputSpec
from open_buildings.models.checkpoint_meta import (
    FORMAT_VERSION,
    INPUT_RANGES,
    OPERATING_POINTS,
    file_sha256,
    read_input_ranges,
    read_metadata,
    read_operating_points,
    read_sidecar,
    write_sidecar,
)
from open_buildings.models.registry import build_model

#: ``kind`` metadata of an encoder file (``models.encoder_file``); a whole model has none.
ENCODER_KIND = "encoder"

__all__ = [
    "FORMAT_VERSION",
    "file_sha256",
    "load_checkpoint",
    "read_metadata",
    "read_input_ranges",
    "read_operating_points",
    "rebuild_model",
    "save_checkpoint",
    "write_operating_points",
]


_LIST_LIMIT = 10


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    model: BuildingModel,
    path: str | os.PathLike[str],
    *,
    operating_points: dict[str, Any] | None = None,
    input_ranges: dict[str, Any] | None = None,
) -> str:
    """Write a model's weights and config to a safetensors file plus a ``.sha256`` sidecar.

    Both files are written to temporary names and renamed into place.

    Args:
        model: The model to save.
        path: Destination ``.safetensors`` path; its folder must exist.
        operating_points: The model's calibrated confidence thresholds (see
            :func:`read_operating_points`), kept in the metadata.
        input_ranges: The ranges of its training imagery's tile statistics (see
            :func:`read_input_ranges`), kept in the metadata.

    Returns:
        The file's sha256 (hex), also written to ``path + ".sha256"``.
    """
    if not isinstance(model, BuildingModel):
        raise TypeError(f"save_checkpoint takes a BuildingModel, got {type(model).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it first")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format_version": FORMAT_VERSION,
        "name": model.name,
        "config": json.dumps(model.config, sort_keys=True),
        "input_spec": json.dumps(model.input_spec.to_dict(), sort_keys=True),
        "output_channels": json.dumps(list(model.output_channels)),
    }
    return write_safetensors(
        path, tensors, _with_calibration(metadata, operating_points, input_ranges)
    )


def _with_calibration(
    metadata: dict[str, str], points: dict[str, Any] | None, ranges: dict[str, Any] | None
) -> dict[str, str]:
    """``metadata`` with the calibration entries that are given (None keeps what is there)."""
    out = dict(metadata)
    for key, value in ((OPERATING_POINTS, points), (INPUT_RANGES, ranges)):
        if value is not None:
            out[key] = json.dumps(value, sort_keys=True)
    return out


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> str:
    """Write tensors and metadata atomically with a sha256 sidecar; return the sha256."""
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return write_sidecar(path)


def rebuild_model(
    metadata: dict[str, str], *, source: str | os.PathLike[str], net: nn.Module | None = None
) -> BuildingModel:
    """Rebuild the model a checkpoint's metadata describes: the one place that does it.

    Args:
        metadata: From :func:`read_metadata`.
        source: The checkpoint's path, for messages.
        net: A network to wrap instead of building one from the registry (a converted copy,
            e.g. an ONNX Runtime session); the metadata must then carry ``input_spec`` and
            ``output_channels``.

    Returns:
        The model with untrained (or ``net``'s) weights, in training mode.

    Raises:
        CheckpointError: The config is not a JSON object, the model or a config key is not
            registered, or the saved input contract or channels differ from the registry's.
    """
    name = metadata["name"]
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{source}: the 'config' metadata is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: the 'config' metadata must be a JSON object")
    if net is not None:
        if "input_spec" not in metadata or "output_channels" not in metadata:
            raise CheckpointError(f"{source} lacks input_spec/output_channels metadata")
        return BuildingModel(
            net,
            name=name,
            config=config,
            input_spec=InputSpec.from_dict(json.loads(metadata["input_spec"])),
            output_channels=tuple(json.loads(metadata["output_channels"])),
        )
    try:
        model = build_model(name, **config)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: cannot rebuild model {name!r}: {exc}") from exc
    if "input_spec" in metadata:
        saved_spec = InputSpec.from_dict(json.loads(metadata["input_spec"]))
        if saved_spec != model.input_spec:
            raise CheckpointError(
                f"{source} was trained for input {saved_spec}, but model {name!r} is now "
                f"registered with {model.input_spec}; use the open_buildings version that wrote it"
            )
    if "output_channels" in metadata:
        saved_channels = tuple(json.loads(metadata["output_channels"]))
        if saved_channels != model.output_channels:
            raise CheckpointError(
                f"{source} has output channels {saved_channels}, but model {name!r} now outputs "
                f"{model.output_channels}"
            )

    return model


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = f" (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return shown + more


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    verify_sidecar: bool = True,
    device: str | torch.device = "cpu",
    moe_capacity: float | None = None,
) -> BuildingModel:
    """Rebuild a model from a checkpoint file alone and load its weights.

    The sha256 is checked first: against ``expected_sha256`` when given, otherwise against the
    ``.sha256`` sidecar unless ``verify_sidecar`` is False.

    Args:
        path: The ``.safetensors`` file.
        expected_sha256: The sha256 the file must have (e.g. from a manifest).
        verify_sidecar: Check the sidecar when no ``expected_sha256`` is given.
        device: Where to put the model.
        moe_capacity: The eval capacity factor to set on a V-MoE model's expert layers
            (``models.moe.set_capacity``); None keeps the checkpoint's.

    Returns:
        The model, in eval mode.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Wrong sha256, not safetensors, unknown model/config, or tensors that
            are missing, unexpected or of the wrong shape (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if expected_sha256 is not None or verify_sidecar:
        expected = (expected_sha256 or read_sidecar(path)).strip().lower()
        actual = file_sha256(path)
        if actual != expected:
            raise CheckpointError(
                f"sha256 mismatch for {path}: expected {expected}, got {actual}. The file is "
                "corrupt, truncated or not the one published; download or copy it again (or "
                "fix the expected hash if the model was deliberately retrained)"
            )
    metadata = read_metadata(path)
    if metadata.get("kind") == ENCODER_KIND:
        raise CheckpointError(
            f"{path} holds an encoder alone (written by ob-pretrain), not a building model; "
            "train one from it with init_from in an ob-train config"
        )
    model = rebuild_model(metadata, source=path)
    name = metadata["name"]
    own = model.state_dict()
    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = set(f.keys())
        missing = sorted(set(own) - keys)
        unexpected = sorted(keys - set(own))
        mismatched = []
        for k in sorted(keys & set(own)):
            shape = tuple(f.get_slice(k).get_shape())
            if shape != tuple(own[k].shape):
                mismatched.append(f"{k} (file {shape}, model {tuple(own[k].shape)})")
        problems = []
        if missing:
            problems.append(f"missing tensors: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected tensors: {_listing(unexpected)}")
        if mismatched:
            problems.append(f"tensors with the wrong shape: {_listing(mismatched)}")
        if problems:
            raise CheckpointError(
                f"{path} does not fit model {name!r} with its saved config: "
                + "; ".join(problems)
                + ". The file was edited or written by different code; re-export it with "
                "save_checkpoint"
            )
        state = {k: f.get_tensor(k) for k in keys}
    model.load_state_dict(state, strict=True)
    if moe_capacity is not None:
        from open_buildings.models.moe import set_capacity

        set_capacity(model, moe_capacity)
    return model.to(device).eval()


def write_operating_points(
    path: str | os.PathLike[str],
    points: dict[str, Any] | None = None,
    *,
    input_ranges: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> str:
    """Store calibration in a checkpoint's metadata; the tensors are kept bit for bit.

    Args:
        path: The checkpoint (its sha256 sidecar is checked first).
        points: From ``training.calibrate.operating_points``; None keeps the file's own.
        input_ranges: From ``training.calibrate.input_ranges``; None keeps the file's own.
        out: Where to write; None replaces ``path`` (atomically, with a new sidecar).

    Returns:
        The sha256 of the file written.
    """
    path = Path(path)
    expected = read_sidecar(path)
    if file_sha256(path) != expected:
        raise CheckpointError(f"sha256 mismatch for {path}; copy the checkpoint again")
    metadata = read_metadata(path)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    metadata = _with_calibration(metadata, points, input_ranges)
    target = Path(out) if out is not None else path
    if not target.parent.is_dir():
        raise FileNotFoundError(f"folder {target.parent} does not exist; create it first")
    return write_safetensors(target, tensors, metadata)
