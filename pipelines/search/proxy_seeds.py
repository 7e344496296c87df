"""The proxy's seed noise: a finished search's top cells, its best random cell and the plain
decoder, each retrained on the same proxy with more seeds (the search trains each cell once, at
its seed). Writes ``proxy_seeds.json`` beside the search's outputs.

    python pipelines/search/proxy_seeds.py [runs/search/decoder] [--seeds 1 2] [--top 3]
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

from open_buildings.config import load_config
from open_buildings.models.checkpoint import load_checkpoint
from open_buildings.pipelines.runtime import resolve_model
from open_buildings.training import search_proxy
from open_buildings.training.config import SearchConfig, TrainConfig
from open_buildings.training.search import History
from open_buildings.training.search_space import from_text


def main() -> None:
    """Retrain the chosen cells with more seeds; print mean ± sd with the search's own seed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", default="runs/search/decoder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    folder = Path(args.folder)
    cfg = load_config(SearchConfig, folder / "config.yaml")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = History.open(folder / "history.csv").rows
    ranked = sorted(rows, key=lambda r: -r["ap50"])
    chosen = ranked[: args.top] + [next(r for r in ranked if r["kind"] == "random")]
    reference = json.loads((folder / "reference.json").read_text())
    runs = [(r["cell"], r["kind"], r["ap50"]) for r in chosen] + [
        ("plain U-Net decoder", "reference", reference["ap50"])
    ]
    data = search_proxy.prepare(
        load_config(TrainConfig, cfg.train_config),
        load_checkpoint(resolve_model(cfg.encoder_from).path),
        chip=cfg.proxy.chip,
        batches=cfg.proxy.batches,
        batch_size=cfg.proxy.batch_size,
    )
    out = []
    for text, kind, first in runs:
        cell = None if kind == "reference" else from_text(text)
        scores = [first] + [
            search_proxy.train_candidate(
                data, cell, steps=cfg.proxy.steps, lr=cfg.proxy.lr, seed=seed
            )[1]["ap50"]
            for seed in args.seeds
        ]
        out.append({"cell": text, "kind": kind, "ap50": scores, "seeds": [cfg.seed, *args.seeds]})
        print(
            f"{kind} {text}: proxy AP50 {statistics.mean(scores):.3f} ± "
            f"{statistics.stdev(scores):.3f} over seeds {[cfg.seed, *args.seeds]}"
        )
    (folder / "proxy_seeds.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
