"""In-domain representation learning for a building model's encoder (``ob-pretrain``).

Two objectives, as Neumann et al. compare them: ``supervised_scene`` trains the encoder (from
ImageNet) with a linear head on remote-sensing scene classes; ``simsiam`` (Chen & He, 2021: two
augmented views, a projector and a predictor, a stop-gradient, no negatives, so it works at a
CPU's small batch) learns from unlabelled chips on the 50 cm grid. Either way the encoder is
saved as an encoder file (``models.encoder_file``) that ``init_from`` loads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import albumentations as A  # noqa: N812 (the library's own convention)
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from open_buildings.config import dump_config
from open_buildings.errors import ConfigError
from open_buildings.geo.grid import GridSpec
from open_buildings.geo.imagery import open_imagery
from open_buildings.models.encoder_file import init_encoder, save_encoder
from open_buildings.models.registry import build_model
from open_buildings.training.config import PretrainConfig
from open_buildings.training.representation import PooledEncoder
from open_buildings.training.scenes import load_scenes
from open_buildings.training.vtab_tasks import image_folder_task

ENCODER = "encoder.safetensors"


def unlabelled_chips(cfg: PretrainConfig) -> np.ndarray:
    """Chips of ``cfg.size`` pixels, at least 90% imaged, cut from every ``imagery`` area.

    Raises:
        ConfigError: the areas give no chip.
    """
    chips = []
    for area in cfg.imagery:
        source = open_imagery(area.imagery, bands=area.bands, scale=area.scale)
        for scene in load_scenes(area.name, source, None, GridSpec(level=16)):
            height, width = scene.valid.shape
            for r in range(0, height - cfg.size + 1, cfg.size):
                for c in range(0, width - cfg.size + 1, cfg.size):
                    window = (slice(r, r + cfg.size), slice(c, c + cfg.size))
                    if scene.valid[window].mean() >= 0.9:
                        chips.append(scene.rgb[(slice(None), *window)])
    if not chips:
        raise ConfigError("the imagery areas give no chip of imagery; check their paths")
    return np.stack(chips)


def _views(size: int) -> A.Compose:
    """SimSiam's augmentations, with the colour ones weaker than on photos (imagery is dull)."""
    return A.Compose(
        [
            A.RandomResizedCrop(size=(size, size), scale=(0.3, 1.0), p=1.0),
            A.HorizontalFlip(),
            A.VerticalFlip(),
            A.RandomRotate90(),
            A.ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.8),
            A.ToGray(p=0.2),
            A.GaussianBlur(blur_limit=(3, 5), p=0.5),
        ]
    )


def _flips() -> A.Compose:
    return A.Compose([A.HorizontalFlip(), A.VerticalFlip(), A.RandomRotate90()])


def _batch(images: np.ndarray, pick: np.ndarray, augment: A.Compose, seed: int) -> torch.Tensor:
    out = []
    for i, index in enumerate(pick):
        augment.set_random_seed(seed * 100_003 + i)  # a view is a function of (step, index)
        out.append(augment(image=images[index].transpose(1, 2, 0))["image"].transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).float() / 255.0


class SimSiamHead(nn.Module):
    """SimSiam's projector (3 layers, BN) and predictor (a bottleneck MLP), small for a CPU."""

    def __init__(self, dim: int, width: int = 512, bottleneck: int = 128) -> None:
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(dim, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
            nn.Linear(width, width, bias=False), nn.BatchNorm1d(width, affine=False),
        )  # fmt: skip
        self.predictor = nn.Sequential(
            nn.Linear(width, bottleneck, bias=False), nn.BatchNorm1d(bottleneck), nn.ReLU(),
            nn.Linear(bottleneck, width),
        )  # fmt: skip


def simsiam_loss(p1, p2, z1, z2) -> torch.Tensor:
    """Symmetric negative cosine similarity, with the stop-gradient on the projections."""
    cos = nn.functional.cosine_similarity
    return -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) / 2


def pretrain(cfg: PretrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train the encoder as configured; write the encoder file, its card and the history.

    Returns:
        ``{"encoder", "sha256", "history", "seconds", "summary"}``: ``summary`` holds the
        scene test top-1 (``supervised_scene``) or the final projection spread, whose collapse
        to 0 would mean SimSiam learnt a constant (``simsiam``).

    Raises:
        ConfigError: ``out`` already holds an encoder, or the data gives nothing to train on.
    """
    out = Path(cfg.out)
    if (out / ENCODER).exists():
        raise ConfigError(f"{out} already holds {ENCODER}; choose another out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    if cfg.init_from:
        init_encoder(model, cfg.init_from)
    encoder = PooledEncoder(model)
    dim = encoder.width(cfg.size)
    if cfg.objective == "supervised_scene":
        task = image_folder_task("scenes", Path(cfg.scenes), cfg.size)
        images, pool, head = task.images, task.pool, nn.Linear(dim, len(task.classes))
    else:
        images = unlabelled_chips(cfg)
        pool, head = np.arange(len(images)), SimSiamHead(dim)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    views, flips = _views(cfg.size), _flips()
    history: list[dict[str, Any]] = []
    began = time.perf_counter()
    encoder.train()
    head.train()
    for step in tqdm(range(cfg.steps), disable=not progress, desc="ob-pretrain", unit="step"):
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        pick = rng.choice(pool, size=min(cfg.batch_size, len(pool)), replace=False)
        record: dict[str, Any] = {"step": step + 1}
        if cfg.objective == "supervised_scene":
            logits = head(encoder(_batch(images, pick, flips, step)))
            loss = nn.functional.cross_entropy(logits, torch.from_numpy(task.labels[pick]))
        else:
            z1 = head.projector(encoder(_batch(images, pick, views, 2 * step)))
            z2 = head.projector(encoder(_batch(images, pick, views, 2 * step + 1)))
            loss = simsiam_loss(head.predictor(z1), head.predictor(z2), z1, z2)
            spread = nn.functional.normalize(z1.detach(), dim=1).std(dim=0).mean()
            record["z_spread"] = float(spread * z1.shape[1] ** 0.5)  # ~1 healthy, 0 collapsed
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record["loss"] = loss.item()
        history.append(record)
    seconds = time.perf_counter() - began
    summary: dict[str, Any] = {"objective": cfg.objective, "steps": cfg.steps}
    if cfg.objective == "supervised_scene":
        encoder.eval()
        head.eval()
        with torch.inference_mode():
            x = torch.from_numpy(images[task.test]).float() / 255.0
            right = (head(encoder(x)).argmax(1).numpy() == task.labels[task.test]).mean()
        summary["scene_test_top1"] = float(right)
        summary["n_images"] = int(len(pool))
    else:
        summary["z_spread_last"] = float(np.mean([h["z_spread"] for h in history[-10:]]))
        summary["n_chips"] = int(len(images))
    data = (
        str(cfg.scenes)
        if cfg.objective == "supervised_scene"
        else ", ".join(a.name for a in cfg.imagery)
    )
    sha = save_encoder(
        model,
        out / ENCODER,
        extra={"objective": cfg.objective, "data": data, "init_from": str(cfg.init_from),
               "summary": json.dumps(summary)},
    )  # fmt: skip
    (out / "history.json").write_text(json.dumps(history, indent=1))
    (out / "ENCODER_CARD.md").write_text(_card(cfg, data, sha, summary, seconds))
    return {"encoder": str(out / ENCODER), "sha256": sha, "history": history,
            "seconds": seconds, "summary": summary}  # fmt: skip


def _card(cfg: PretrainConfig, data: str, sha: str, summary: dict, seconds: float) -> str:
    result = (
        f"top-1 on the scene set's held-out test split: {summary['scene_test_top1']:.3f}"
        if "scene_test_top1" in summary
        else f"projection spread over the last 10 steps: {summary['z_spread_last']:.2f} "
        "(about 1 when the representation has not collapsed, 0 when it has)"
    )
    return "\n".join([
        f"# Encoder: {cfg.model}, {cfg.objective}",
        "",
        f"- sha256 of `{ENCODER}`: {sha}",
        f"- started from: {cfg.init_from or 'random weights'}",
        f"- data: {data}",
        f"- {cfg.steps} steps of {cfg.batch_size} images of {cfg.size} px, AdamW lr {cfg.lr}, "
        f"seed {cfg.seed}, {seconds / 60:.1f} min",
        f"- {result}",
        "",
        f"Use it with `init_from: {ENCODER}` (its path) and `model: {cfg.model}` in an ob-train",
        "config.",
        "",
    ])  # fmt: skip
