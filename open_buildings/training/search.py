"""``ob-search``: progressive neural architecture search (PNAS, Liu et al. 2018) of the U-Net
decoder's cell, against random search at an equal number of trained candidates.

1. Every one-block cell is trained on the proxy task (``search_proxy``) and scored (AP50).
2. The surrogate (``search_surrogate``) is fitted on every PNAS cell scored so far; the K best
   cells of the last level are expanded by one block, the surrogate ranks all their children,
   the top K are trained; its Spearman correlation on them is recorded before it is refitted.
   This repeats up to B blocks. K and B come from the time budget, measured on level 1.
3. Random search trains as many cells of ``max_blocks`` blocks, drawn uniformly (PNAS's
   baseline); one random candidate is
   trained after each PNAS candidate, so a run stopped by its budget compares equal counts.
4. Every trained cell's milliseconds per tile are measured (``search_cost``).

``history.csv`` is appended after every candidate and ``costs.csv`` after every group, so a run
resumes where it stopped: what is recorded is skipped, and the choices are recomputed from the
record (the surrogate's fit is deterministic).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from open_buildings.training.search_space import (
    Cell,
    expand,
    from_text,
    level_one,
    random_cell,
    to_text,
)

FIELDS = (
    "kind", "level", "cell", "seed", "ap50", "ap", "best_f1", "f1", "train_seconds", "params",
    "predicted",
)  # fmt: skip
#: Later levels' cells train slower than level 1's; the plan allows for it.
LATER_LEVEL_COST = 1.3


@dataclass
class History:
    """``history.csv``: one row per trained candidate, appended as each finishes."""

    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path) -> History:
        """Read the rows already recorded (none for a new search)."""
        rows: list[dict[str, Any]] = []
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    rows.append(_typed(row))
        return cls(path, rows)

    def find(self, kind: str, cell: Cell) -> dict[str, Any] | None:
        """The record of ``cell`` trained as ``kind`` (``pnas`` or ``random``), if any."""
        key = to_text(cell)
        return next((r for r in self.rows if r["kind"] == kind and r["cell"] == key), None)

    def add(self, row: dict[str, Any]) -> None:
        """Append a row (the file is created with its header first)."""
        new = not self.path.is_file()
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in FIELDS})
        self.rows.append(row)

    def of(self, kind: str, level: int | None = None) -> list[dict[str, Any]]:
        """The rows of one kind (and level)."""
        return [
            r for r in self.rows if r["kind"] == kind and (level is None or r["level"] == level)
        ]


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(row)
    for key in ("level", "seed", "params"):
        out[key] = int(row[key])
    for key in ("ap50", "ap", "best_f1", "f1", "train_seconds"):
        out[key] = float(row[key])
    out["predicted"] = float(row["predicted"]) if row.get("predicted") else None
    return out


@dataclass(frozen=True)
class Plan:
    """K (cells kept per level) and B (largest cell), fixed once level 1 is measured."""

    beam: int
    max_blocks: int
    seconds_per_candidate: float


def plan_from_budget(
    budget_s: float,
    spent_s: float,
    per_candidate_s: float,
    *,
    max_blocks: int,
    random_baseline: bool,
    reserve_s: float,
    cost_s_per_cell: float = 0.0,
    beam: int | None = None,
) -> Plan:
    """Choose K and B so that the remaining levels (and their random twins) fit the budget.

    Args:
        budget_s: the whole budget.
        spent_s: what level 1 took.
        per_candidate_s: a level-1 candidate's training time (later ones are counted
            :data:`LATER_LEVEL_COST` times that).
        max_blocks: the largest cell wanted.
        random_baseline: whether each candidate has a random twin.
        reserve_s: time kept for measuring the cells already trained.
        cost_s_per_cell: time to measure one more cell's cost.
        beam: a fixed K; then B alone is reduced until the levels fit (down to 1).
    """
    twins = 2 if random_baseline else 1
    cost = (per_candidate_s * LATER_LEVEL_COST + cost_s_per_cell) * twins
    left = max(budget_s - spent_s - reserve_s, 0.0)
    for blocks in range(max_blocks, 1, -1):
        k = beam if beam is not None else int(left // (cost * (blocks - 1)))
        if k >= 1 and k * (blocks - 1) * cost <= left:
            return Plan(k, blocks, per_candidate_s)
    return Plan(beam or 1, 1, per_candidate_s)


def run_search(
    cfg: Any,
    out: Path,
    *,
    train: Callable[[Cell, int], dict[str, Any]],
    cost: Callable[[list[Cell], Callable[[str, float, float], None]], None],
    budget_s: float,
    cost_s_per_cell: float = 5.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the search in ``out``; return the summary written to ``search.json``.

    Args:
        cfg: the :class:`~.config.SearchConfig`.
        out: the search folder (``history.csv``, ``plan.json``, ``costs.csv``...).
        train: trains and scores a cell with a seed (``search_proxy.train_candidate``'s scores).
        cost: measures the given cells' ms per tile, calling back per cell (``search_cost``).
        budget_s: the time budget in seconds, for this run and the recorded ones together.
        cost_s_per_cell: seconds the cost measurement takes per cell (``search_cost.probe``),
            kept aside in the plan for every cell the search will train.
        log: where progress lines go.
    """
    history = History.open(out / "history.csv")
    ops = tuple(cfg.ops)
    rng = np.random.default_rng(cfg.seed)
    randoms: list[Cell] = []
    spent = sum(r["train_seconds"] for r in history.rows)
    began = time.perf_counter()

    def elapsed() -> float:
        return spent + time.perf_counter() - began

    def over_budget() -> bool:
        return elapsed() > budget_s

    def next_random(blocks: int) -> Cell:
        while True:  # the same draws in the same order on every resume
            cell = random_cell(rng, blocks, ops)
            if cell not in randoms:
                randoms.append(cell)
                return cell

    def trained(kind: str, level: int, cell: Cell, predicted: float | None = None) -> dict:
        found = history.find(kind, cell)
        if found is not None:
            return found
        scores = train(cell, cfg.seed)
        row = {"kind": kind, "level": level, "cell": to_text(cell), "seed": cfg.seed, **scores}
        row["predicted"] = predicted
        history.add(row)
        log(
            f"{kind} level {level} {to_text(cell)}: AP50 {scores['ap50']:.3f}, best F1 "
            f"{scores['best_f1']:.3f} ({scores['train_seconds']:.0f} s)"
        )
        return row

    def pair(level: int, cell: Cell, predicted: float | None) -> bool:
        """Train a PNAS candidate and its random twin (a cell of ``max_blocks`` blocks, whatever
        the plan, so the draws do not depend on it); False once the budget is spent."""
        if history.find("pnas", cell) is None and over_budget():
            return False
        trained("pnas", level, cell, predicted)
        if cfg.random_baseline:
            twin = next_random(cfg.max_blocks)
            if history.find("random", twin) is None and over_budget():
                return False
            trained("random", cfg.max_blocks, twin)
        return True

    stopped = None
    plan_path = out / "plan.json"
    plan = _read_plan(plan_path)
    first = level_one(ops)
    for cell in first:
        if not pair(1, cell, None):
            stopped = "the budget ran out in level 1"
            break
    if plan is None and stopped is None:
        per = float(np.mean([r["train_seconds"] for r in history.of("pnas", 1)]))
        plan = plan_from_budget(
            budget_s,
            elapsed(),
            per,
            max_blocks=cfg.max_blocks,
            random_baseline=cfg.random_baseline,
            reserve_s=cost_s_per_cell * len(history.rows),
            cost_s_per_cell=cost_s_per_cell,
            beam=cfg.beam,
        )
        plan_path.write_text(json.dumps(plan.__dict__, indent=2) + "\n", encoding="utf-8")
        log(f"plan: K = {plan.beam} cells per level, up to {plan.max_blocks} blocks")
    levels: list[dict[str, Any]] = []
    if plan is not None and stopped is None:
        from open_buildings.training.search_surrogate import Surrogate, rank_correlation

        beam = _best(history.of("pnas", 1), plan.beam)
        for level in range(2, plan.max_blocks + 1):
            scored = trained_before(history, level)
            surrogate = Surrogate(plan.max_blocks, cfg.surrogate_members, cfg.seed).fit(
                [from_text(r["cell"]) for r in scored], [r["ap50"] for r in scored]
            )
            children = sorted({c for parent in beam for c in expand(parent, ops)})
            predicted = surrogate.predict(children)
            order = np.argsort(-predicted, kind="stable")[: plan.beam]
            chosen = [(children[i], float(predicted[i])) for i in order]
            for cell, guess in chosen:
                if not pair(level, cell, guess):
                    stopped = f"the budget ran out in level {level}"
                    break
            rows = [history.find("pnas", c) for c, _ in chosen]
            rows = [r for r in rows if r is not None]
            levels.append(
                {
                    "level": level,
                    "children": len(children),
                    "trained": len(rows),
                    "spearman": rank_correlation(
                        [r["predicted"] for r in rows], [r["ap50"] for r in rows]
                    ),
                    "predicted": [r["predicted"] for r in rows],
                    "measured": [r["ap50"] for r in rows],
                    "cells": [r["cell"] for r in rows],
                }
            )
            if stopped:
                break
            beam = [from_text(r["cell"]) for r in sorted(rows, key=lambda r: -r["ap50"])]
    (out / "surrogate.json").write_text(
        json.dumps({"metric": "proxy AP50", "levels": levels}, indent=2) + "\n", encoding="utf-8"
    )
    costs = _costs(out, history, cost, log)
    return {
        "stopped": stopped or "all levels trained",
        "plan": None if plan is None else plan.__dict__,
        "trained": {"pnas": len(history.of("pnas")), "random": len(history.of("random"))},
        "levels": levels,
        "costs": costs,
        "seconds": elapsed(),
    }


def trained_before(history: History, level: int) -> list[dict[str, Any]]:
    """Every candidate (PNAS and random) trained before the level's first PNAS candidate, so a
    resumed search fits the surrogate on what the first run fitted it on."""
    rows = history.rows
    first = next(
        (i for i, r in enumerate(rows) if r["kind"] == "pnas" and r["level"] == level), len(rows)
    )
    return rows[:first]


def _best(rows: list[dict[str, Any]], k: int) -> list[Cell]:
    return [from_text(r["cell"]) for r in sorted(rows, key=lambda r: -r["ap50"])[:k]]


def _read_plan(path: Path) -> Plan | None:
    if not path.is_file():
        return None
    return Plan(**json.loads(path.read_text(encoding="utf-8")))


def _costs(
    out: Path,
    history: History,
    cost: Callable[[list[Cell], Callable[[str, float, float], None]], None],
    log: Callable[[str], None],
) -> dict[str, float]:
    """Measure (or read back) every trained cell's ms per tile; ``costs.csv`` is the record."""
    path = out / "costs.csv"
    known: dict[str, float] = {}
    group_reference: dict[str, float] = {}
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                known[row["cell"]] = float(row["ms_per_tile"])
                group_reference[row["cell"]] = float(row["reference_ms"])
    todo = sorted({r["cell"] for r in history.rows} - set(known))

    def done(key: str, ms: float, reference: float) -> None:
        new = not path.is_file()
        with path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["cell", "ms_per_tile", "reference_ms"])
            writer.writerow([key, f"{ms:.2f}", f"{reference:.2f}"])
        known[key] = ms
        group_reference[key] = reference

    if todo:
        log(f"cost: {len(todo)} cells, milliseconds per tile in ob-infer's runtime")
        cost([from_text(t) for t in todo], done)
    references = list(group_reference.values())
    reference = float(np.median(references)) if references else math.nan
    # each cell's ms over the plain decoder's in its own interleaved group, on the median scale:
    # a group slowed by a busy machine moves both, so the ratio is what compares across groups
    relative = {k: ms / group_reference[k] * reference for k, ms in known.items()}
    return {"cells": known, "relative": relative, "reference_ms": reference}
