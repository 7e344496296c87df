"""An exponential moving average of the weights, the model a run validates and saves when enabled.

torch's ``AveragedModel`` with its EMA update does the averaging; this module only builds it and
restores it on resume (the average and the number of updates are all its state).
"""

from __future__ import annotations

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from open_buildings.models.base import BuildingModel


def new_ema(model: BuildingModel, decay: float, updates: int = 0) -> AveragedModel:
    """An EMA of ``model``'s parameters and buffers, starting from its current weights.

    Args:
        model: the model being trained, or (on resume) the saved average itself.
        decay: the weight kept per update, e.g. 0.995 (a window of about 200 steps).
        updates: how many updates the saved average has had (0 for a new run).
    """
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.n_averaged.fill_(updates)
    return ema


def averaged(ema: AveragedModel) -> BuildingModel:
    """The averaged network inside ``ema``, in eval mode, ready to validate or save."""
    module = ema.module
    module.eval()
    return module


def updates(ema: AveragedModel) -> int:
    """How many times ``ema`` has been updated."""
    return int(ema.n_averaged)
