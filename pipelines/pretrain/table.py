"""Pool label_fraction.sh's runs into bench/label_fraction.md: AP50 and the F1 of the default
output on the validation blocks, mean ± std over the seeds finished, per init and fraction."""

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

RUNS = Path("runs/label_fraction")
OUT = Path("bench/label_fraction.md")
VERDICT = "## Verdict"
INITS = ("random", "imagenet", "scene", "simsiam")
HEADER = """# Encoder init x label fraction on the building validation blocks

Written by `pipelines/pretrain/table.py` from `pipelines/pretrain/label_fraction.sh`: each cell
is `pipelines/train/default/base.yaml` (Lite1 U-Net, mixup) trained for STEPS steps from the
given encoder (`random`; `imagenet`; `scene`: `pipelines/pretrain/scene.yaml`, supervised on UC
Merced; `simsiam`: `pipelines/pretrain/simsiam.yaml`, SimSiam on unlabelled chips) on the
labels of that share of the training tiles' level-16 cells (`label_fraction`), then scored on
the validation blocks by `pipelines/eval/val_blocks.sh` (382 OSM buildings: those whose centroid
lies in a block, ob-infer's rule; the 10% runs were first scored by the older rule and re-scored
so): AP50 / F1 of the default output, mean ± standard deviation over the seeds finished (their
number in brackets). One thread per run on a 2-core AMD EPYC (avx512_bf16), fp32; STEPS=100.

"""


def _cell(values: list[float]) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)})"


def main() -> None:
    """Write the table (and print it)."""
    found: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for path in sorted(RUNS.glob("*/val_blocks.json")):
        init, fraction, _ = re.fullmatch(r"(\w+?)_([\d.]+)_s(\d+)", path.parent.name).groups()
        found[(init, fraction)].append(json.loads(path.read_text()))
    fractions = sorted({f for _, f in found}, key=float)
    rows = [
        "| init | "
        + " | ".join(f"{float(f):.0%} labels: AP50 / F1 default" for f in fractions)
        + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for init in INITS:
        cells = []
        for f in fractions:
            runs = found.get((init, f), [])
            ap50 = _cell([r["ap50"] for r in runs])
            f1 = _cell([r["default_output"]["f1"] for r in runs])
            cells.append(f"{ap50} / {f1}")
        rows.append(f"| {init} | " + " | ".join(cells) + " |")
    text = "\n".join(rows) + "\n"
    verdict = ""  # written by hand below the marker; kept when the table is rewritten
    if OUT.is_file() and VERDICT in OUT.read_text():
        verdict = "\n" + VERDICT + OUT.read_text().split(VERDICT, 1)[1]
    OUT.write_text(HEADER + text + verdict, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
