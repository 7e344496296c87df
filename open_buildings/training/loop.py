"""The training loop: chips -> augment -> (mixup) -> loss (+ soft KL on unlabelled chips) -> step
(for a two-date change model: pairs from :mod:`.change_pairs`, validated by :mod:`.change_task`).

:func:`train_step` is one optimisation step on given batches, testable on its own; a
:class:`Trainer` draws each step's batches, calls it, and runs its hooks (validation,
checkpoints, the progress bar) after every step, in the manner of torchgeo's ``BaseTask`` and
Lightning's callbacks. :func:`train` wires them from a :class:`TrainConfig`.

Everything random in a step (which chips, their augmentation, mixup's λ and partners, dropout)
is derived from ``(seed, step)``, so a run resumed from a checkpoint takes exactly the steps an
uninterrupted run would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from open_buildings.config import dump_config
from open_buildings.errors import ConfigError
from open_buildings.evaluation.evaluate import Evaluation
from open_buildings.geo.grid import GridSpec
from open_buildings.models.base import BuildingModel
from open_buildings.models.checkpoint import load_checkpoint
from open_buildings.models.encoder_file import init_encoder
from open_buildings.models.losses import segmentation_loss
from open_buildings.models.registry import build_model
from open_buildings.pipelines import faults
from open_buildings.pipelines.runtime import native_bf16, resolve_device
from open_buildings.training import change_task, distributed
from open_buildings.training import chips as chipping
from open_buildings.training.batches import Batch
from open_buildings.training.config import TrainConfig
from open_buildings.training.distill import soft_kl_loss
from open_buildings.training.ema import averaged, new_ema, updates
from open_buildings.training.mixup import mixup
from open_buildings.training.optim import frozen_encoder, lr_at, optimizer_factory
from open_buildings.training.run_end import finish_run
from open_buildings.training.scenes import Scene
from open_buildings.training.sources import RunData, check_resume, run_data
from open_buildings.training.state import load_ema, load_state, load_stream, save_state
from open_buildings.training.stopping import Best, best_from_history, best_hook, deadline_hook
from open_buildings.training.validate import metrics, score_scenes

CHECKPOINT_DIR = "checkpoint"
FINAL_WEIGHTS = "weights.safetensors"


def new_model(cfg: TrainConfig) -> BuildingModel:
    """Build the configured model and load its ``init_from`` (or ``start_from``) weights.

    Raises:
        ConfigError: ``start_from`` holds another network than ``model`` describes.
    """
    torch.manual_seed(cfg.seed)
    if cfg.start_from:
        path = Path(cfg.start_from)
        model = load_checkpoint(path / FINAL_WEIGHTS if path.is_dir() else path)
        if model.name != cfg.model:
            raise ConfigError(
                f"start_from {cfg.start_from} holds a {model.name!r} model, but the config's "
                f"model is {cfg.model!r}; set model: {model.name}"
            )
        return model.train()
    model = build_model(cfg.model, **cfg.model_overrides)
    if cfg.init_from:
        init_encoder(model, cfg.init_from)
    return model


def train_step(
    model: BuildingModel,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: TrainConfig,
    step: int,
    *,
    unlabelled: Batch | None = None,
    forward: torch.nn.Module | None = None,
    ranks: distributed.Ranks = distributed.ALONE,
) -> dict[str, Any]:
    """Take one optimisation step on a labelled batch (and the step's unlabelled one).

    Sets the step's learning rate (:func:`lr_at`), mixes the batch with probability
    ``cfg.mixup.prob``, adds the model's auxiliary loss (V-MoE) and, with ``unlabelled``, the
    weighted soft-KL loss against the teacher's targets; then back-propagates and steps.

    Args:
        model: the model, on its device.
        optimizer: its optimizer.
        batch: the labelled batch (:func:`labelled_batch`).
        cfg: the run's config (learning rate, mixup, losses, seed, bf16).
        step: the 0-based step, which seeds mixup and dropout.
        unlabelled: the step's unlabelled chips with soft targets (:func:`unlabelled_batch`).
        forward: what runs the batches: the model under DistributedDataParallel (which
            all-reduces the gradients), or the model itself when None.
        ranks: this process among the data-parallel ones; the record's losses are their mean.

    Returns:
        The step's record: ``step`` (1-based), ``loss`` (the supervised loss), ``mixup``, and
        ``aux`` and ``kl`` when they apply.
    """
    device = next(model.parameters()).device
    net = forward if forward is not None else model
    model.train()
    if cfg.freeze_encoder:
        frozen_encoder(model).eval()
    for group in optimizer.param_groups:
        group["lr"] = lr_at(cfg, step) * group.get("lr_scale", 1.0)
    images, targets, weights = batch.images, batch.targets, batch.weights
    rng = chipping.rng_for(cfg.seed, step, 2)
    mixed = cfg.mixup.enabled and bool(rng.random() < cfg.mixup.prob)
    if mixed:
        images, targets, weights, _ = mixup(images, targets, weights, rng, cfg.mixup.alpha)
    torch.manual_seed(cfg.seed * 1_000_003 + step)
    joint = unlabelled is not None and forward is not None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        if joint:  # DistributedDataParallel takes one forward per backward
            both = net(torch.cat([images, unlabelled.images]).to(device))
            logits, student = both[: len(images)], both[len(images) :]
        else:
            logits = net(images.to(device))
    weights = weights.to(device)
    # ranks normalise by their mean weight, so their mean loss is the joint batch's
    shared = logits.shape[1] if weights.ndim == 3 else 1  # (B, H, W) weights serve each channel
    norm = None if ranks.world == 1 else distributed.mean_tensor(weights.sum() * shared, ranks)
    loss = segmentation_loss(
        logits.float(), targets.to(device), weights, dice_weight=cfg.dice_weight, total_weight=norm
    )
    record: dict[str, Any] = {
        "step": step + 1,
        "loss": distributed.mean(loss.item(), ranks),
        "mixup": mixed,
    }
    aux = model.aux_loss()
    if aux is not None:
        record["aux"] = aux.item()
        loss = loss + aux
    if unlabelled is not None:
        st = cfg.self_training
        if not joint:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                student = net(unlabelled.images.to(device))
        kl = soft_kl_loss(
            student.float(),
            unlabelled.targets.to(device),
            st.temperature,
            unlabelled.weights.to(device),
        )
        record["kl"] = distributed.mean(kl.item(), ranks)
        loss = loss + st.weight * kl
        aux = model.aux_loss() if not joint else None
        if aux is not None:
            loss = loss + aux
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return record


#: ``hook(trainer, step, record)`` runs after each step (0-based ``step``); it may add to
#: ``record``, which is appended to the history after every hook has run.
Hook = Callable[["Trainer", int, dict[str, Any]], None]


@dataclass
class Trainer:
    """Draws each step's batches, takes the step, and runs the hooks.

    Attributes:
        cfg: the run's config.
        model: the model, on its device.
        optimizer: its optimizer.
        draw: ``draw(step, transform)``, each step's labelled batch (chips, or change pairs).
        draw_unlabelled: each step's unlabelled batch (self-training), or None.
        hooks: run after each step, in order.
        history: one record per step taken (resumed runs start with the earlier ones).
        scored: the latest validation's full result.
        ema: the weights' moving average, when the config keeps one.
        forward: the model under DistributedDataParallel, when there are several ranks.
        ranks: this process among the data-parallel ones (hooks run on every rank; those that
            validate, save or report act on rank 0, whose decision to stop every rank follows).
    """

    cfg: TrainConfig
    model: BuildingModel
    optimizer: torch.optim.Optimizer
    draw: Callable[[int, Any], Batch]
    draw_unlabelled: Callable[[int, Any], Batch] | None = None
    hooks: Sequence[Hook] = ()
    history: list[dict[str, Any]] = field(default_factory=list)
    #: the latest validation (``validate.score_scenes``), reused for the operating points
    scored: Evaluation | None = None
    ema: AveragedModel | None = None
    #: why the run ends before ``cfg.steps`` (set by a hook; the step's hooks still all run)
    stop: str | None = None
    #: the best validation so far, when the config keeps the best weights
    best: Best | None = None
    forward: torch.nn.Module | None = None
    ranks: distributed.Ranks = distributed.ALONE

    @property
    def result(self) -> BuildingModel:
        """The model the run validates and saves: the moving average when kept, else the model."""
        return self.model if self.ema is None else averaged(self.ema)

    def fit(self, start: int = 0) -> list[dict[str, Any]]:
        """Take steps ``start`` to ``cfg.steps - 1``; return the history."""
        transform = chipping.augmenter()
        for step in range(start, self.cfg.steps):
            batch = self.draw(step, transform)
            extra = None if self.draw_unlabelled is None else self.draw_unlabelled(step, transform)
            record = train_step(
                self.model, self.optimizer, batch, self.cfg, step, unlabelled=extra,
                forward=self.forward, ranks=self.ranks,
            )  # fmt: skip
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            for hook in self.hooks:
                hook(self, step, record)
            self.stop = distributed.from_main(self.stop, self.ranks)
            self.history.append(record)
            if self.stop:
                break
        return self.history


def validation_hook(
    scenes: Sequence[Scene], score: Callable[[BuildingModel], dict] | None = None
) -> Hook:
    """Score the model on ``scenes`` every ``val_every`` steps and at the last step (with
    ``score``, a change model's scorer of pairs from those scenes, instead of ob-infer's)."""

    def hook(trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        cfg = trainer.cfg
        due = (step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps or trainer.stop
        if scenes and due and score is not None:
            record["val"] = score(trainer.result)
        elif scenes and due:
            scored = score_scenes(trainer.result, scenes, bf16=cfg.bf16, spec=_spec(cfg))
            record["val"] = metrics(scored)
            trainer.scored = scored

    return hook


def checkpoint_hook(folder: Path, stream: Callable[[int], dict | None] = lambda step: None) -> Hook:
    """Save the resumable state every ``checkpoint_every`` steps and at the last step (with
    ``stream(steps done)``, the position in the shard stream)."""

    def hook(trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        cfg = trainer.cfg
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or trainer.stop:
            history = [*trainer.history, record]
            ema = None if trainer.ema is None else (trainer.result, updates(trainer.ema))
            save_state(
                folder,
                trainer.model,
                trainer.optimizer,
                step + 1,
                history,
                ema=ema,
                stream=stream(step + 1),
            )
            faults.point("checkpoint")

    return hook


def progress_hook(bar: Any) -> Hook:
    """Advance a tqdm bar, showing the step's loss."""

    def hook(trainer: Trainer, step: int, record: dict[str, Any]) -> None:
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        bar.update(1)

    return hook


def _spec(cfg: TrainConfig) -> GridSpec:
    return GridSpec(level=cfg.grid_level)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a model as configured; write checkpoints, final weights, history and curve to ``out``.

    Args:
        cfg: the run's config.
        resume: continue from ``out/checkpoint`` instead of starting afresh.
        progress: show a progress bar with the loss.

    Returns:
        ``{"weights": path, "history": [...], "seconds": float, "final": metrics or None}``
        (on ranks other than 0, which save nothing: ``{"rank", "history"}``).

    Raises:
        ConfigError: if ``out`` already holds a run and ``resume`` is False, or data is missing.
    """
    ranks = distributed.from_env()
    shared = max(1, (os.cpu_count() or 1) // ranks.local_world)  # the machine's cores, split
    threads = cfg.threads or (shared if ranks.world > 1 else None)
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(cfg.device)  # fails loudly on a machine without the GPU asked for
    device = distributed.device_for(ranks, device)
    if cfg.bf16 == "auto":
        cfg = cfg.model_copy(update={"bf16": native_bf16(cfg.device)})
    change = change_task.is_change_model(cfg.model)
    if change:  # before any data is read
        change_task.check_change_config(cfg, ranks.world)
    out = Path(cfg.out)
    ckpt = out / CHECKPOINT_DIR
    if not resume and ckpt.exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or pick --out")
    distributed.start(ranks, device)
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))

    if resume:
        model, optimizer, start, history = load_state(ckpt, optimizer_factory(cfg))
    else:
        model = new_model(cfg)
        optimizer = optimizer_factory(cfg)(model)
        start, history = 0, []
    data = run_data(cfg, ranks, start)
    if resume:
        check_resume(load_stream(ckpt), data.stream_state(cfg, start, ranks))
    ema = None
    if cfg.ema.enabled:
        saved, done = load_ema(ckpt) if resume else (model, 0)
        ema = new_ema(saved, cfg.ema.decay, updates=done)
        ema.to(device)
    model.to(device)
    began = time.perf_counter()
    with tqdm(
        initial=start,
        total=cfg.steps,
        disable=not (progress and ranks.main),
        desc="ob-train",
        unit="step",
    ) as bar:
        score = change_task.pair_scorer(data.val, cfg) if change else None
        trainer = Trainer(
            cfg,
            model,
            optimizer,
            change_task.pair_batches(data.pool, cfg, data.held) if change else data.labelled,
            data.unlabelled,
            hooks=_hooks(cfg, data, out, bar, score, ranks) if ranks.main else [],
            history=history,
            ema=ema,
            best=best_from_history(history, out) if cfg.stopping.keep_best else None,
            forward=distributed.wrap(model, ranks, cfg.sync_batch_norm),
            ranks=ranks,
        )
        if cfg.stopping.keep_best and start == 0 and ranks.main:
            _initial_candidate(trainer, data.val, out)
        history = trainer.fit(start)
    distributed.barrier(ranks)
    distributed.finish(ranks)
    if not ranks.main:
        return {"rank": ranks.rank, "history": history}
    seconds = time.perf_counter() - began
    return finish_run(cfg, trainer, data, out / FINAL_WEIGHTS, device, seconds, change)


def _hooks(
    cfg: TrainConfig, data: RunData, out: Path, bar: Any, score: Any, ranks: distributed.Ranks
) -> list[Hook]:
    # Order matters: the deadline may end the step, which the validation hook then scores, which
    # the best hook then reads; the checkpoint is saved after both.
    hooks: list[Hook] = []
    if cfg.stopping.max_minutes:
        hooks.append(deadline_hook(cfg.stopping.max_minutes))
    hooks.append(validation_hook(data.val, score))
    if cfg.stopping.keep_best or cfg.stopping.patience:
        if not data.val:
            raise ConfigError("stopping.keep_best and stopping.patience need 'val' areas")
        hooks.append(best_hook(out, cfg.stopping.patience))
    stream = lambda step: data.stream_state(cfg, step, ranks)  # noqa: E731
    return [*hooks, checkpoint_hook(out / CHECKPOINT_DIR, stream), progress_hook(bar)]


def _initial_candidate(trainer: Trainer, val_scenes: list[Scene], out: Path) -> None:
    """Validate the starting weights as step 0, a candidate for the best: a run that never
    beats them keeps them (fine-tuning that only hurts the held-out tiles gives the base back)."""
    cfg = trainer.cfg
    scored = score_scenes(trainer.result, val_scenes, bf16=cfg.bf16, spec=_spec(cfg))
    record: dict[str, Any] = {"step": 0, "loss": None, "val": metrics(scored)}
    best_hook(out, None)(trainer, -1, record)
    trainer.history.append(record)
