"""Re-fit ob-search's surrogate on a finished search's history, as the search would at each level,
and give its rank correlation on the PNAS candidates that level then trained.

Retrospective: the candidates scored are those the search's own surrogate chose, so this measures
how well the current features rank them, not which children they would have chosen.

    python pipelines/search/surrogate_check.py [runs/search/decoder]
"""

import statistics
import sys
from pathlib import Path

from open_buildings.training.search import History, trained_before
from open_buildings.training.search_space import from_text
from open_buildings.training.search_surrogate import Surrogate, rank_correlation


def main() -> None:
    """Print the rank correlation per level."""
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/search/decoder")
    history = History.open(folder / "history.csv")
    levels = sorted({r["level"] for r in history.of("pnas")} - {1})
    for level in levels:
        fit = trained_before(history, level)
        test = history.of("pnas", level)
        rhos = []
        for seed in range(0, 25, 5):  # five ensembles of five MLPs, no seed shared
            surrogate = Surrogate(max(levels), 5, seed).fit(
                [from_text(r["cell"]) for r in fit], [r["ap50"] for r in fit]
            )
            predicted = surrogate.predict([from_text(r["cell"]) for r in test])
            rhos.append(rank_correlation(predicted, [r["ap50"] for r in test]))
        shown = (
            "n/a"
            if None in rhos
            else f"{statistics.mean(rhos):.2f} ± {statistics.stdev(rhos):.2f} (5 ensemble seeds)"
        )
        print(f"level {level}: fitted on {len(fit)}, scored {len(test)}: Spearman {shown}")


if __name__ == "__main__":
    main()
