"""Training state on disk: model weights, optimizer moments and the step, all in safetensors.

A resumed run restores exactly this state; everything random in a step is derived from
``(seed, step)``, so nothing else needs saving for the run to continue exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from open_buildings.errors import CheckpointError
from open_buildings.models.base import BuildingModel
from open_buildings.models.checkpoint import load_checkpoint, save_checkpoint

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
EMA_FILE = "ema.safetensors"


def save_state(
    folder: str | os.PathLike[str],
    model: BuildingModel,
    optimizer: torch.optim.Optimizer,
    step: int,
    history: list[dict[str, Any]],
    ema: tuple[BuildingModel, int] | None = None,
    stream: dict[str, Any] | None = None,
) -> None:
    """Write the model, the optimizer and the step into ``folder`` (each file atomically).

    Args:
        folder: the run's checkpoint folder.
        model: the model being trained.
        optimizer: its optimizer (AdamW): per-parameter tensors go to safetensors, the rest
            (step counts, hyper-parameters) to JSON.
        step: the number of optimizer steps taken.
        history: the loss and validation log so far.
        ema: the weights' moving average and its number of updates, when the run keeps one.
        stream: the position in the ``ob-chips`` shard stream, when the run reads shards.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, folder / MODEL_FILE)
    if ema is not None:
        save_checkpoint(ema[0], folder / EMA_FILE)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"{index}.{key}"] = value.contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = float(value)
    tmp = folder / (OPTIMIZER_FILE + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / OPTIMIZER_FILE)
    meta = {
        "step": step,
        "history": history,
        "optimizer_scalars": scalars,
        "param_groups": optimizer.state_dict()["param_groups"],
        "ema_updates": None if ema is None else ema[1],
        "stream": stream,
    }
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, folder / STATE_FILE)


def load_state(
    folder: str | os.PathLike[str], optimizer_factory
) -> tuple[BuildingModel, torch.optim.Optimizer, int, list[dict[str, Any]]]:
    """Restore what :func:`save_state` wrote.

    Args:
        folder: the run's checkpoint folder.
        optimizer_factory: builds a fresh optimizer for the loaded model.

    Returns:
        The model, the optimizer with its moments restored, the step and the history.

    Raises:
        CheckpointError: if a file is missing or does not fit the model.
    """
    folder = Path(folder)
    for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"cannot resume: {folder / name} is missing")
    model = load_checkpoint(folder / MODEL_FILE)
    optimizer = optimizer_factory(model)
    meta = json.loads((folder / STATE_FILE).read_text())
    tensors = load_file(str(folder / OPTIMIZER_FILE))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["optimizer_scalars"].items():
        for name, value in values.items():
            state.setdefault(int(index), {})[name] = torch.tensor(value)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return model, optimizer, int(meta["step"]), list(meta["history"])


def load_ema(folder: str | os.PathLike[str]) -> tuple[BuildingModel, int]:
    """The moving average :func:`save_state` wrote, and its number of updates.

    Raises:
        CheckpointError: if the checkpoint was saved without one.
    """
    folder = Path(folder)
    meta = json.loads((folder / STATE_FILE).read_text())
    if meta.get("ema_updates") is None or not (folder / EMA_FILE).is_file():
        raise CheckpointError(
            f"cannot resume with ema enabled: {folder} was saved without a moving average"
        )
    return load_checkpoint(folder / EMA_FILE), int(meta["ema_updates"])


def load_stream(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The shard stream's position :func:`save_state` recorded (None: trained in memory)."""
    return json.loads((Path(folder) / STATE_FILE).read_text()).get("stream")
