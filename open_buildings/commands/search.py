"""``ob-search CONFIG.yaml [--budget-minutes 60] [--out DIR] [--resume]``: progressive
architecture search (PNAS) of the U-Net decoder's cell, quality against milliseconds per tile."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import add_version, require_train_extra, run_command
from open_buildings.config import dump_config, load_config
from open_buildings.errors import ConfigError, OutputExistsError


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-search`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-search",
        description="Search the U-Net decoder's cell with PNAS (and random search at equal "
        "candidates) on a proxy task; write history.csv, surrogate.json, pareto.json/.png and "
        "the top cells as ob-train configs.",
    )
    add_version(p)
    p.add_argument("config", help="search config YAML, e.g. pipelines/search/decoder.yaml")
    p.add_argument(
        "--override", "-o", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. -o proxy.steps=60",
    )  # fmt: skip
    p.add_argument("--budget-minutes", type=float, help="override the config's budget_minutes")
    p.add_argument("--out", help="override the config's output folder")
    p.add_argument(
        "--resume", action="store_true", help="continue the search recorded in the output folder"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-search``; return the exit status (0 ok, 2 bad input)."""
    return run_command("ob-search", _search, parser().parse_args(argv))


def _search(args: argparse.Namespace) -> int:
    require_train_extra("ob-search")
    import torch

    from open_buildings.models.checkpoint import load_checkpoint
    from open_buildings.pipelines.runtime import resolve_model
    from open_buildings.training import search_cost, search_proxy, search_report
    from open_buildings.training.config import SearchConfig, TrainConfig
    from open_buildings.training.search import History, run_search

    overrides = list(args.override)
    if args.out:
        overrides.append(f"out={Path(args.out).resolve()}")
    if args.budget_minutes is not None:
        overrides.append(f"budget_minutes={args.budget_minutes}")
    cfg = load_config(SearchConfig, args.config, overrides)
    train_cfg = load_config(TrainConfig, cfg.train_config)
    if train_cfg.shards:
        raise ConfigError(
            f"{cfg.train_config} reads 'shards'; ob-search caches its proxy's chips from "
            "'train' areas: point train_config at a config with areas"
        )
    if not train_cfg.val:
        raise ConfigError(
            f"{cfg.train_config} has no 'val' areas; ob-search scores its candidates on them: "
            "add labelled validation tiles (whole tiles the encoder never trained on)"
        )
    encoder_model = load_checkpoint(resolve_model(cfg.encoder_from).path)
    if not encoder_model.name.startswith("unet_"):
        raise ConfigError(
            f"encoder_from {cfg.encoder_from} is a {encoder_model.name} model; ob-search searches "
            "U-Net decoders: give a U-Net checkpoint (the default model is one)"
        )
    out = Path(cfg.out)
    recorded = out / "config.yaml"
    if recorded.is_file() and not args.resume:
        raise OutputExistsError(f"{out} holds a search; pass --resume to continue it, or --out")
    if args.resume and recorded.is_file():
        before = load_config(SearchConfig, recorded)
        if before.model_copy(update={"budget_minutes": 0}) != cfg.model_copy(
            update={"budget_minutes": 0}
        ):
            raise ConfigError(
                f"{out} was searched with another config ({recorded}); resume it with that one "
                "(only budget_minutes may change), or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    recorded.write_text(dump_config(cfg), encoding="utf-8")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    began = time.perf_counter()
    print(f"ob-search: reading the areas of {cfg.train_config} and caching the frozen encoder")
    data = search_proxy.prepare(
        train_cfg,
        encoder_model,
        chip=cfg.proxy.chip,
        batches=cfg.proxy.batches,
        batch_size=cfg.proxy.batch_size,
    )

    def train(cell, seed):
        _, scores = search_proxy.train_candidate(
            data, cell, steps=cfg.proxy.steps, lr=cfg.proxy.lr, seed=seed
        )
        return scores

    def cost(cells, done):
        search_cost.measure(
            encoder_model.name,
            cells,
            tile=cfg.cost.tile,
            rounds=cfg.cost.rounds,
            group=cfg.cost.group,
            threads=cfg.threads,
            done=done,
        )

    per_cell = search_cost.probe(
        encoder_model.name, tile=cfg.cost.tile, rounds=cfg.cost.rounds, threads=cfg.threads
    )
    budget_s = cfg.budget_minutes * 60 - (time.perf_counter() - began)
    summary = run_search(
        cfg, out, train=train, cost=cost, budget_s=budget_s, cost_s_per_cell=per_cell
    )
    reference = out / "reference.json"  # the plain decoder on the same proxy, trained once
    if not reference.is_file():
        reference.write_text(json.dumps(train(None, cfg.seed), indent=2) + "\n", encoding="utf-8")
    summary["reference"] = json.loads(reference.read_text(encoding="utf-8"))
    history = History.open(out / "history.csv").rows
    pareto = search_report.write_pareto(
        out, history, summary["costs"], reference_ap50=summary["reference"]["ap50"]
    )
    top = search_report.write_top_configs(out, history, summary["costs"], train_cfg, data.model)
    summary.update({"top": top, "model": data.model})
    summary["costs"] = {"reference_ms": summary["costs"]["reference_ms"]}
    (out / "search.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _report(summary, pareto, out)
    return 0


def _report(summary: dict, pareto: dict, out: Path) -> None:
    trained = summary["trained"]
    print(
        f"ob-search: {trained['pnas']} PNAS and {trained['random']} random candidates in "
        f"{summary['seconds'] / 60:.1f} min ({summary['stopped']})"
    )
    for level in summary["levels"]:
        rho = level["spearman"]
        print(
            f"level {level['level']}: {level['trained']} of {level['children']} children trained; "
            f"surrogate rank correlation {'n/a' if rho is None else f'{rho:.2f}'}"
        )
    for kind in ("pnas", "random"):
        front = pareto[kind]["front"]
        if front:
            best = max(front, key=lambda p: p["ap50"])
            ms = best["ms_per_tile"]
            print(f"{kind}: best proxy AP50 {best['ap50']:.3f} at {ms:.0f} ms/tile")
    print(
        f"default decoder: proxy AP50 {pareto['reference']['ap50']:.3f} at "
        f"{pareto['reference']['ms_per_tile']:.0f} ms/tile"
    )
    for t in summary["top"]:
        print(f"top: {t['config']} (AP50 {t['ap50']:.3f}, cell {t['cell']})")
    print(f"outputs: {out}/history.csv, surrogate.json, pareto.json, pareto.png, search.json")
