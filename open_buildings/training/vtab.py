"""``ob-vtab``'s protocols: how well a backbone's representation adapts to a task from 1,000
examples (VTAB-1k), by a ridge classifier on frozen features or by fine-tuning.

Both sweep their hyper-parameter on the 800/200 split of each seed's draw, then train on all
1,000 and report top-1 on the task's fixed test split (``vtab_tasks``). The ridge protocol is
big_vision's few-shot evaluator in spirit (closed-form ridge on frozen features), done with
scikit-learn's ``RidgeClassifier`` on standardised features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from open_buildings.models.base import BuildingModel
from open_buildings.models.encoder_file import init_encoder
from open_buildings.models.registry import build_model, list_models
from open_buildings.training.representation import PooledEncoder, encoder_features
from open_buildings.training.vtab_tasks import Task, vtab_1k

ALPHAS = (0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0)
LEARNING_RATES = (1e-3, 1e-4)
RANDOM = "random"


def load_backbone(spec: str) -> Callable[[], BuildingModel]:
    """A factory of fresh copies of a backbone: ``NAME:random``, ``NAME:imagenet`` or
    ``NAME:WEIGHTS`` for a registered model (an ``ob-pretrain`` encoder file, or official
    weights through its family's loader), or a zoo
    model or checkpoint (``default``, ``path/weights.safetensors``) whose encoder is used."""
    from open_buildings.models.checkpoint import load_checkpoint
    from open_buildings.pipelines.runtime import resolve_model

    name, _, init = spec.partition(":")
    if name in list_models() and init:

        def registered() -> BuildingModel:
            torch.manual_seed(0)
            model = build_model(name)
            if init != RANDOM:
                init_encoder(model, init)
            return model

        registered()  # fail now on a bad weight file, not after the first task
        return registered
    path = resolve_model(spec).path
    load_checkpoint(path)
    return lambda: load_checkpoint(path)


def ridge_scores(features: np.ndarray, task: Task, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Top-1 of a ridge classifier on frozen features, one record per seed."""
    out = []
    for seed in seeds:
        train, val = vtab_1k(task, seed)
        y = task.labels
        val_top1 = {
            a: _ridge(features[train], y[train], a).score(features[val], y[val]) for a in ALPHAS
        }
        alpha = max(ALPHAS, key=lambda a: val_top1[a])  # the first of equals: the least shrunk
        both = np.concatenate([train, val])
        clf = _ridge(features[both], y[both], alpha)
        top1 = clf.score(features[task.test], y[task.test])
        out.append(
            {"seed": seed, "top1": float(top1), "alpha": alpha, "val_top1": float(val_top1[alpha])}
        )
    return out


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float):
    return make_pipeline(StandardScaler(), RidgeClassifier(alpha=alpha)).fit(x, y)


def finetune_scores(
    factory: Callable[[], BuildingModel],
    task: Task,
    seeds: Sequence[int],
    *,
    steps: int = 200,
    batch: int = 32,
) -> list[dict[str, Any]]:
    """Top-1 after fine-tuning the encoder with a linear head (AdamW, flips), one per seed."""
    out = []
    for seed in seeds:
        train, val = vtab_1k(task, seed)
        val_top1 = {}
        for lr in LEARNING_RATES:
            net = _fit(factory(), task, train, lr, steps, batch, seed)
            val_top1[lr] = _top1(net, task, val)
        lr = max(LEARNING_RATES, key=lambda r: val_top1[r])
        net = _fit(factory(), task, np.concatenate([train, val]), lr, steps, batch, seed)
        out.append(
            {
                "seed": seed,
                "top1": _top1(net, task, task.test),
                "lr": lr,
                "val_top1": val_top1[lr],
                "steps": steps,
            }
        )
    return out


def _fit(
    model: BuildingModel,
    task: Task,
    index: np.ndarray,
    lr: float,
    steps: int,
    batch: int,
    seed: int,
) -> nn.Module:
    torch.manual_seed(seed)
    encoder = PooledEncoder(model)
    net = nn.Sequential(encoder, nn.Linear(encoder.width(task.images.shape[-1]), len(task.classes)))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    net.train()
    for _ in range(steps):
        pick = rng.choice(index, size=min(batch, len(index)), replace=False)
        x = torch.from_numpy(task.images[pick]).float() / 255.0
        if rng.random() < 0.5:
            x = x.flip(-1)
        if rng.random() < 0.5:
            x = x.flip(-2)
        loss = nn.functional.cross_entropy(net(x), torch.from_numpy(task.labels[pick]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net.eval()


def _top1(net: nn.Module, task: Task, index: np.ndarray) -> float:
    right = 0
    with torch.inference_mode():
        for start in range(0, len(index), 64):
            pick = index[start : start + 64]
            x = torch.from_numpy(task.images[pick]).float() / 255.0
            right += int((net(x).argmax(1).numpy() == task.labels[pick]).sum())
    return right / len(index)


def run(
    backbones: Sequence[str],
    tasks: Sequence[Task],
    *,
    protocol: str = "ridge",
    seeds: Sequence[int] = (0, 1, 2),
    finetune_steps: int = 200,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score every backbone on every task; return ``vtab.json``'s content."""
    rows: dict[str, dict[str, Any]] = {}
    for spec in backbones:
        factory = load_backbone(spec)
        rows[spec] = {}
        for task in tasks:
            if protocol == "ridge":
                records = ridge_scores(encoder_features(factory(), task.images), task, seeds)
            else:
                records = finetune_scores(factory, task, seeds, steps=finetune_steps)
            top1 = [r["top1"] for r in records]
            rows[spec][task.name] = {
                "mean": float(np.mean(top1)),
                "std": float(np.std(top1, ddof=1)) if len(top1) > 1 else 0.0,
                "seeds": records,
            }
            log(f"{spec} {task.name}: top-1 {np.mean(top1):.3f}")
    return {
        "protocol": protocol,
        "seeds": list(seeds),
        "tasks": {
            t.name: {
                "classes": t.classes,
                "n_pool": len(t.pool),
                "n_test": len(t.test),
                "note": t.note,
            }
            for t in tasks
        },
        "backbones": rows,
    }


def markdown(result: dict[str, Any], skipped: Sequence[str] = ()) -> str:
    """``vtab.md``: top-1 (mean ± std over seeds) per backbone and task, and what was chosen."""
    tasks = list(result["tasks"])
    lines = [
        f"# VTAB-1k ({result['protocol']}), seeds {result['seeds']}",
        "",
        "| backbone | " + " | ".join(tasks) + " | mean |",
        "|---|" + "---|" * (len(tasks) + 1),
    ]
    key = "alpha" if result["protocol"] == "ridge" else "lr"
    for spec, row in result["backbones"].items():
        cells = [f"{row[t]['mean']:.3f} ± {row[t]['std']:.3f}" for t in tasks]
        mean = np.mean([row[t]["mean"] for t in tasks])
        lines.append(f"| {spec} | " + " | ".join(cells) + f" | {mean:.3f} |")
    lines += ["", f"Chosen {key} per seed (on the 800/200 split):", ""]
    for spec, row in result["backbones"].items():
        chosen = "; ".join(f"{t} {[r[key] for r in row[t]['seeds']]}" for t in tasks)
        lines.append(f"- {spec}: {chosen}")
    lines += ["", "Tasks:", ""]
    for name, info in result["tasks"].items():
        extra = f"; {info['note']}" if info["note"] else ""
        lines.append(
            f"- {name}: {len(info['classes'])} classes, pool {info['n_pool']}, "
            f"test {info['n_test']}{extra}"
        )
    for line in skipped:
        lines.append(f"- skipped: {line}")
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path, skipped: Sequence[str] = ()) -> None:
    """Write ``vtab.json`` and ``vtab.md`` into ``out``."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "vtab.json").write_text(json.dumps({**result, "skipped": list(skipped)}, indent=1))
    (out / "vtab.md").write_text(markdown(result, skipped))
