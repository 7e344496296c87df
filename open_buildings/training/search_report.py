"""``ob-search``'s outputs: the quality/cost frontiers, their plot, and the top cells as
``ob-train`` configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from open_buildings.config import dump_config
from open_buildings.training.config import TrainConfig
from open_buildings.training.search_space import from_text


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats in both AP50 (higher) and ms per tile (lower), by cost."""
    front: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda p: (p["ms_per_tile"], -p["ap50"])):
        if not front or p["ap50"] > front[-1]["ap50"]:
            front.append(p)
    return front


def write_pareto(
    out: Path,
    rows: list[dict[str, Any]],
    costs: dict[str, Any],
    *,
    reference_ap50: float | None = None,
) -> dict[str, Any]:
    """Write ``pareto.json`` and ``pareto.png``: every trained cell's proxy AP50 against its ms
    per tile, each method's frontier, and the plain decoder (``reference_ap50``: its proxy
    score); return the JSON document. A cell's ms is its ratio to the plain decoder timed in the
    same interleaved group, times the plain decoder's median (``costs["relative"]``)."""
    cells = costs["relative"]
    points: dict[str, list[dict[str, Any]]] = {"pnas": [], "random": []}
    for r in rows:
        if r["cell"] in cells:
            points[r["kind"]].append(
                {
                    "cell": r["cell"],
                    "level": r["level"],
                    "ap50": r["ap50"],
                    "best_f1": r["best_f1"],
                    "ms_per_tile": cells[r["cell"]],
                }
            )
    doc = {
        "metric": "proxy AP50 on the validation scenes",
        "reference": {"ap50": reference_ap50, "ms_per_tile": costs["reference_ms"]},
        "pnas": {"points": points["pnas"], "front": pareto_front(points["pnas"])},
        "random": {"points": points["random"], "front": pareto_front(points["random"])},
    }
    (out / "pareto.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    _plot(out / "pareto.png", doc)
    return doc


def _plot(path: Path, doc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for kind, colour in (("random", "tab:grey"), ("pnas", "tab:blue")):
        pts, front = doc[kind]["points"], doc[kind]["front"]
        if not pts:
            continue
        ax.scatter(
            [p["ms_per_tile"] for p in pts], [p["ap50"] for p in pts], s=12, alpha=0.5,
            color=colour, label=f"{kind} ({len(pts)} cells)",
        )  # fmt: skip
        ax.step(
            [p["ms_per_tile"] for p in front], [p["ap50"] for p in front], where="post",
            color=colour, linewidth=1.5, marker="o", markersize=4,
        )  # fmt: skip
    reference = doc["reference"]
    if reference["ap50"] is not None and reference["ms_per_tile"] == reference["ms_per_tile"]:
        ax.scatter(
            [reference["ms_per_tile"]], [reference["ap50"]], marker="*", s=160,
            color="tab:red", label="default U-Net decoder", zorder=3,
        )  # fmt: skip
    ax.set_xlabel(
        "ms per 512 px tile, ob-infer's runtime on this CPU\n"
        "(ratio to the plain decoder in the same timing group x its median)"
    )
    ax.set_ylabel("proxy AP50")
    ax.set_title("ob-search: PNAS against random search")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_top_configs(
    out: Path,
    rows: list[dict[str, Any]],
    costs: dict[str, Any],
    train_cfg: TrainConfig,
    model: str,
    top: int = 3,
) -> list[dict[str, Any]]:
    """Write the ``top`` cells by proxy AP50 (any method) as ``top<n>.yaml`` ``ob-train`` configs:
    the search's training config with the cell as ``model_overrides.decoder_cell``."""
    best: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: -r["ap50"]):
        best.setdefault(r["cell"], r)
    chosen = list(best.values())[:top]
    written = []
    for n, r in enumerate(chosen, 1):
        cell = [list(b) for b in from_text(r["cell"])]
        cfg = train_cfg.model_copy(
            update={
                "model": model,
                "model_overrides": {**train_cfg.model_overrides, "decoder_cell": cell},
                "out": str((out / f"train_top{n}").resolve()),
            }
        )
        path = out / f"top{n}.yaml"
        ms = costs["relative"].get(r["cell"], float("nan"))
        header = (
            f"# ob-search top {n}: proxy AP50 {r['ap50']:.3f}, {ms:.0f} ms per tile; "
            f"train it in full with: ob-train {path.name}\n"
        )
        path.write_text(header + dump_config(cfg), encoding="utf-8")
        written.append({"config": str(path), "cell": r["cell"], "ap50": r["ap50"]})
    return written
