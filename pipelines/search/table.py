"""Pool the one-hour search (runs/search/decoder) and the full retraining
(pipelines/search/retrain.sh) into bench/search.md. The verdict below its marker is written by
hand and kept when the tables are rewritten."""

import csv
import json
import statistics
import sys
from pathlib import Path

import yaml

SEARCH = Path("runs/search/decoder")
RETRAIN = Path("runs/search/retrain")
DEFAULT = Path("runs/default")
OUT = Path("bench/search.md")
VERDICT = "## Verdict"
HEADER = """# ob-search: a one-hour PNAS of the decoder cell, and the best cell trained in full

Written by `pipelines/search/table.py` from
`ob-search pipelines/search/decoder.yaml --budget-minutes 60 --out runs/search/decoder`
(ops {ops}, up to {blocks} blocks; proxy: the shipped model's frozen Lite1 encoder, {steps} steps
of {batch} chips of {chip} px, scored by AP50 on the validation tiles; 2-core AMD EPYC with
avx512_bf16, both cores) and `pipelines/search/retrain.sh` (the best cell and the default decoder
trained in full: base.yaml's recipe with EMA, 1,200 steps, 3 seeds, 1 thread each, then scored by
`pipelines/eval/val_blocks.sh` as a user gets them).

"""


def _ms(values: list[float]) -> str:
    if len(values) > 1:
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
    return f"{values[0]:.3f}" if values else "not run"


def _ratio(cost: dict) -> float:
    """A cell's ms per tile over the plain decoder's, both timed in the same interleaved group."""
    return float(cost["ms_per_tile"]) / float(cost["reference_ms"])


def _search_tables() -> str:
    rows = list(csv.DictReader((SEARCH / "history.csv").open()))
    costs = {r["cell"]: r for r in csv.DictReader((SEARCH / "costs.csv").open())}
    plan = json.loads((SEARCH / "plan.json").read_text())
    surrogate = json.loads((SEARCH / "surrogate.json").read_text())
    summary = json.loads((SEARCH / "search.json").read_text())
    reference = json.loads((SEARCH / "reference.json").read_text())
    ref_ms = summary["costs"]["reference_ms"]
    kinds = {k: [r for r in rows if r["kind"] == k] for k in ("pnas", "random")}
    out = [
        f"Plan from the budget after level 1: K = {plan['beam']}, up to {plan['max_blocks']} "
        f"blocks. Trained: {len(kinds['pnas'])} PNAS and {len(kinds['random'])} random "
        f"candidates in {summary['seconds'] / 60:.1f} min ({summary['stopped']}).",
        "",
        "## Surrogate: rank correlation on each new level, before it was trained",
        "",
        "| level | children | trained (the surrogate's top K) | Spearman, predicted vs measured |",
        "|---|---|---|---|",
    ]
    for lv in surrogate["levels"]:
        rho = "n/a" if lv["spearman"] is None else f"{lv['spearman']:.2f}"
        out.append(f"| {lv['level']} | {lv['children']} | {lv['trained']} | {rho} |")
    out += [
        "",
        "## PNAS against random search, equal candidates, same proxy",
        "",
        "| | candidates | best proxy AP50 | mean ± sd | best AP50 no slower than the plain "
        "decoder (same group) |",
        "|---|---|---|---|---|",
    ]
    for kind, rs in kinds.items():
        aps = [float(r["ap50"]) for r in rs]
        cheap = [float(r["ap50"]) for r in rs if _ratio(costs[r["cell"]]) <= 1.0]
        best_cheap = f"{max(cheap):.3f}" if cheap else "none"
        out.append(f"| {kind} | {len(rs)} | {max(aps):.3f} | {_ms(aps)} | {best_cheap} |")
    out.append(f"| plain U-Net decoder | 1 | {reference['ap50']:.3f} | | ({ref_ms:.0f} ms/tile) |")
    out += [
        "",
        "Best PNAS candidate per level: "
        + "; ".join(
            f"level {lv}: {max(float(r['ap50']) for r in kinds['pnas'] if r['level'] == lv):.3f}"
            for lv in sorted({r["level"] for r in kinds["pnas"]})
        )
        + ".",
        "",
        "## Top cells (any method) and their cost",
        "",
        "| cell | found by | proxy AP50 | ms per 512 px tile | plain decoder, same group | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -float(r["ap50"]))[:6]:
        c = costs[r["cell"]]
        out.append(
            f"| `{r['cell']}` | {r['kind']} (level {r['level']}) | {float(r['ap50']):.3f} | "
            f"{float(c['ms_per_tile']):.0f} | {float(c['reference_ms']):.0f} | {_ratio(c):.2f} |"
        )
    return "\n".join(out) + "\n"


def _seed_table() -> str:
    path = SEARCH / "proxy_seeds.json"
    if not path.is_file():
        return ""
    out = [
        "",
        "## The proxy's seed noise (`pipelines/search/proxy_seeds.py`)",
        "",
        "| cell | found by | proxy AP50 per seed | mean ± sd |",
        "|---|---|---|---|",
    ]
    for r in json.loads(path.read_text()):
        seeds = ", ".join(f"{v:.3f}" for v in r["ap50"])
        out.append(f"| `{r['cell']}` | {r['kind']} | {seeds} | {_ms(r['ap50'])} |")
    return "\n".join(out) + "\n"


def _retrain_table(model: str) -> str:
    out = [
        "",
        "## The best cell trained in full, against the default decoder",
        "",
        "| run | F1, default output (P / R) | AP50 | AP |",
        "|---|---|---|---|",
    ]
    for label, pattern in ((model, f"{model}_s"), ("default decoder (Lite1, EMA)", None)):
        got = []
        for s in (0, 1, 2):
            run = RETRAIN / f"{pattern}{s}" if pattern else DEFAULT / f"ema_s{s}"
            path = run / "val_blocks.json"
            if not path.is_file():
                continue
            d = json.loads(path.read_text())
            got.append(d)
            f = d["default_output"]
            out.append(
                f"| {label}, seed {s} | {f['f1']:.3f} ({f['precision']:.3f} / {f['recall']:.3f}) "
                f"| {d['ap50']:.3f} | {d['ap']:.3f} |"
            )
        out.append(
            f"| **{label}, mean ± sd ({len(got)} seeds)** | "
            f"{_ms([d['default_output']['f1'] for d in got])} | {_ms([d['ap50'] for d in got])} "
            f"| {_ms([d['ap'] for d in got])} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    """Write bench/search.md (and print its tables)."""
    model = sys.argv[1] if len(sys.argv) > 1 else "unet_efficientnet_lite1_pnas"
    cfg = yaml.safe_load((SEARCH / "config.yaml").read_text())
    header = HEADER.format(
        ops=", ".join(cfg["ops"]), blocks=cfg["max_blocks"], steps=cfg["proxy"]["steps"],
        batch=cfg["proxy"]["batch_size"], chip=cfg["proxy"]["chip"],
    )  # fmt: skip
    text = _search_tables() + _seed_table() + _retrain_table(model)
    verdict = ""
    if OUT.is_file() and VERDICT in OUT.read_text():
        verdict = "\n" + VERDICT + OUT.read_text().split(VERDICT, 1)[1]
    OUT.write_text(header + text + verdict, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
