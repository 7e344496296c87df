"""Pool run.sh's scores into bench/finetune.md: per area, the base model and the fine-tuned
seeds (mean ± standard deviation) on the test block, as ob-eval-model measured them."""

import json
import statistics
from pathlib import Path

RUNS = Path("runs/finetune")
OUT = Path("bench/finetune.md")
KEYS = (
    ("F1 default output", lambda r: r["default_output"]["f1"]),
    ("best F1", lambda r: (r["best_f1"] or {}).get("f1", 0.0)),
    ("AP50", lambda r: r["ap50"] or 0.0),
)


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


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
    OUT.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
