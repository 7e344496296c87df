"""Pool run.sh's scores into bench/finetune.md: per area, the base model and the fine-tuned
seeds (mean ± standard deviation) on the test block, as ob-eval-model measured them."""

import json
import statistics
from pathlib import Path

RUNS = Path("runs/finetune")
VERDICT = "## Verdict"
OUT = Path("bench/finetune.md")
HEADER = """# ob-finetune on every labelled area here

Written by `pipelines/finetune/table.py` from `MINUTES=8 [PROTOCOL=area] pipelines/finetune/run.sh`
(one thread per run, two runs side by side). Each area is fine-tuned from a base that never saw
it (Banepa, Zanzibar and Nairobi: `pipelines/finetune/base_without_<area>.yaml`, 600 steps on the
other two towns; Joplin: the shipped default model, which never saw Joplin) with `--minutes 8`.
Its test block (a whole S2 level-14 tile, `pipelines/finetune/regions/<area>_test.geojson`) is
scored with `ob-eval-model`: `ob-infer` with each model's defaults, so "F1 default output" is
what a user gets; a region holds the buildings whose centroid lies in it (ob-infer's rule). The
base is one model; the fine-tuned rows are three seeds (mean ± sample standard deviation). No
test-block label is ever read by ob-finetune. Two protocols:

- **area** (`PROTOCOL=area`, rows `<area>_area`): what a user runs. The imagery of the whole
  area is given, with the labels of everything but the test block, so the test block's tiles
  are unlabelled imagery of the area (self-training may use them, as it would any unmapped part
  of a user's town).
- **block** (rows `<area>`): the test block is cut out of the region as well
  (`<area>_finetune.geojson`), so fine-tuning never sees its imagery either.

`nairobi_area_unfrozen` is the area protocol with every layer trained
(`VARIANT=unfrozen FINETUNE_ARGS="--freeze-encoder no" PROTOCOL=area run.sh nairobi`).

"""
KEYS = (
    ("F1 default output", lambda r: r["default_output"]["f1"]),
    ("best F1", lambda r: (r["best_f1"] or {}).get("f1", 0.0)),
    ("AP50", lambda r: r["ap50"] or 0.0),
)


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _runs() -> str:
    lines = ["", "Each run (from its `finetune.json`):", ""]
    for path in sorted(RUNS.glob("*/s*/finetune.json")):
        r = json.loads(path.read_text())
        off = r["label_offset_m"] or {}
        lines.append(
            f"- {path.parent.parent.name} seed {r['seed']}: {r['steps']} steps, best at step "
            f"{r['best_step']} ({r['stopped']}); {r['split']['n_train']} buildings trained on, "
            f"{r['split']['n_held_back']} held back; self-training on "
            f"{len(r.get('self_training_tiles', []))} unlabelled tiles; label offset "
            f"{off.get('east', 0):+.1f} m east, {off.get('north', 0):+.1f} m north"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write the table (and print it)."""
    rows = [
        "| area (test block) | model | n | "
        + " | ".join(k for k, _ in KEYS)
        + " | gain in F1 of the default output |",
        "|---|---|---|" + "---|" * len(KEYS) + "---|",
    ]
    for area in sorted(p for p in RUNS.iterdir() if (p / "base.test.json").is_file()):
        base = json.loads((area / "base.test.json").read_text())
        tuned = [json.loads(p.read_text()) for p in sorted(area.glob("s*.test.json"))]
        rows.append(
            f"| {area.name} ({base['n_truth']} buildings) | base | 1 | "
            + " | ".join(_cell([f(base)]) for _, f in KEYS)
            + " | |"
        )
        if tuned:
            gains = [KEYS[0][1](t) - KEYS[0][1](base) for t in tuned]
            rows.append(
                f"| | fine-tuned | {len(tuned)} | "
                + " | ".join(_cell([f(t) for t in tuned]) for _, f in KEYS)
                + f" | {_cell(gains)} |"
            )
    text = "\n".join(rows) + "\n"
    verdict = ""  # written by hand below the marker; kept when the table is rewritten
    if OUT.is_file() and VERDICT in OUT.read_text():
        verdict = "\n" + VERDICT + OUT.read_text().split(VERDICT, 1)[1]
    OUT.write_text(HEADER + text + _runs() + verdict, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
