"""Write an evaluation out: metrics.json, report.md, pr_curve.png, iou_hist.png; and a summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from open_buildings.errors import OutputExistsError
from open_buildings.evaluation.evaluate import Evaluation
from open_buildings.evaluation.thresholds import best_f1

FILES = ("metrics.json", "report.md", "pr_curve.png", "iou_hist.png")


def metrics_dict(ev: Evaluation, *, pred: str = "", truth: str = "") -> dict[str, object]:
    """Return the evaluation as a JSON-ready dict.

    Args:
        ev: The evaluation.
        pred: PRED's path, recorded as given.
        truth: TRUTH's path, recorded as given.

    Returns:
        Inputs, COCO mAP, SpaceNet F1 (overall and per image), thresholds, the PR curve, notes.
    """
    return {
        "inputs": {"pred": pred, "truth": truth, "crs": ev.crs},
        "n_pred": ev.n_pred,
        "n_truth": ev.n_truth,
        "coco": ev.coco.as_dict(),
        "spacenet": {
            "iou_threshold": ev.f1.iou_threshold,
            "total": ev.f1.total.as_dict(),
            "per_image": {str(k): v.as_dict() for k, v in ev.f1.per_image.items()},
        },
        "precision_thresholds": [
            {
                "target_precision": p.target,
                "threshold": p.threshold,
                "precision": p.precision,
                "recall": p.recall,
                "note": p.note,
            }
            for p in ev.thresholds
        ],
        "best_f1": best_f1(ev.curve),
        "pr_curve": {
            "threshold": ev.curve.thresholds.tolist(),
            "precision": ev.curve.precision.tolist(),
            "recall": ev.curve.recall.tolist(),
        },
        "matched_iou": ev.f1.matches[2].tolist(),
        "notes": ev.notes,
    }


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.1%}" if pct else f"{value:.4f}"


def summary(ev: Evaluation) -> str:
    """Return a one-screen plain-text summary.

    Args:
        ev: The evaluation.

    Returns:
        About twenty lines of text.
    """
    t = ev.f1.total
    c = ev.coco
    lines = [
        f"{ev.n_pred:,} predictions vs {ev.n_truth:,} truth polygons (compared in {ev.crs})",
        "",
        f"SpaceNet (IoU >= {ev.f1.iou_threshold}): F1 {t.f1:.4f}  precision {t.precision:.4f}  "
        f"recall {t.recall:.4f}  (TP {t.tp:,}  FP {t.fp:,}  FN {t.fn:,})",
        f"COCO mAP@[.50:.95] {_fmt(c.ap)}  AP50 {_fmt(c.ap50)}  AP75 {_fmt(c.ap75)}  "
        f"AR {_fmt(c.ar)}",
    ]
    best = best_f1(ev.curve)
    if best is not None:
        lines.append(
            f"best F1 over confidence thresholds: {best['f1']:.4f} at score >= "
            f"{best['threshold']:.4g} (precision {best['precision']:.4f}, "
            f"recall {best['recall']:.4f})"
        )
    lines += ["", "confidence threshold for a target precision:"]
    for p in ev.thresholds:
        if p.threshold is None:
            lines.append(f"  {p.target:.0%}: none ({p.note})")
        else:
            lines.append(
                f"  {p.target:.0%}: score >= {p.threshold:.4g} (precision {p.precision:.1%}, "
                f"recall {p.recall:.1%})"
            )
    if len(ev.f1.per_image) > 1:
        lines += ["", f"{len(ev.f1.per_image)} images; lowest F1:"]
        worst = sorted(ev.f1.per_image.items(), key=lambda kv: kv[1].f1)[:5]
        for key, counts in worst:
            lines.append(
                f"  {key}: F1 {counts.f1:.3f} (TP {counts.tp} FP {counts.fp} FN {counts.fn})"
            )
    if ev.notes:
        lines += [""] + [f"note: {n}" for n in ev.notes]
    return "\n".join(lines)


def _best_f1_lines(ev: Evaluation) -> list[str]:
    best = best_f1(ev.curve)
    if best is None:
        return []
    return [
        f"Best F1 over confidence thresholds: {best['f1']:.4f} at score >= {best['threshold']:.4g}"
        f" (precision {best['precision']:.4f}, recall {best['recall']:.4f}).",
        "",
    ]


def markdown(ev: Evaluation, *, pred: str = "", truth: str = "") -> str:
    """Return a short Markdown report.

    Args:
        ev: The evaluation.
        pred: PRED's path.
        truth: TRUTH's path.

    Returns:
        The report text, linking the two plots.
    """
    t = ev.f1.total
    c = ev.coco
    out = [
        "# Building footprint evaluation",
        "",
        f"- predictions: `{pred}` ({ev.n_pred:,} polygons)",
        f"- truth: `{truth}` ({ev.n_truth:,} polygons)",
        f"- compared in: {ev.crs}",
        "",
        "## SpaceNet F1 (one-to-one, IoU >= 0.5)",
        "",
        "| TP | FP | FN | precision | recall | F1 |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {t.tp} | {t.fp} | {t.fn} | {t.precision:.4f} | {t.recall:.4f} | {t.f1:.4f} |",
        "",
        "## COCO instance mAP",
        "",
        "| AP@[.50:.95] | AP50 | AP75 | AR |",
        "|---:|---:|---:|---:|",
        f"| {_fmt(c.ap)} | {_fmt(c.ap50)} | {_fmt(c.ap75)} | {_fmt(c.ar)} |",
        "",
        *_best_f1_lines(ev),
        "## Confidence thresholds",
        "",
        "The lowest confidence at which the kept footprints reach each precision (IoU 0.5).",
        "",
        "| target precision | threshold | precision | recall |",
        "|---:|---:|---:|---:|",
    ]
    for p in ev.thresholds:
        if p.threshold is None:
            out.append(f"| {p.target:.0%} | none: {p.note} | | |")
        else:
            out.append(
                f"| {p.target:.0%} | {p.threshold:.4g} | {p.precision:.1%} | {p.recall:.1%} |"
            )
    out += ["", "![precision/recall](pr_curve.png)", "", "![IoU of matches](iou_hist.png)"]
    if len(ev.f1.per_image) > 1:
        out += [
            "",
            "## Per image",
            "",
            "| image | TP | FP | FN | precision | recall | F1 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for key, n in ev.f1.per_image.items():
            out.append(
                f"| {key} | {n.tp} | {n.fp} | {n.fn} | {n.precision:.4f} | {n.recall:.4f} "
                f"| {n.f1:.4f} |"
            )
    if ev.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in ev.notes]
    return "\n".join(out) + "\n"


def plot_pr_curve(ev: Evaluation, path: Path) -> None:
    """Draw the precision/recall curve with the target-precision points marked.

    Args:
        ev: The evaluation.
        path: The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    try:
        if len(ev.curve.thresholds):
            ax.step(ev.curve.recall, ev.curve.precision, where="post", color="C0", label="PR curve")
        for i, p in enumerate(ev.thresholds):
            ax.axhline(p.target, color="0.8", lw=0.8, ls="--")
            if p.threshold is not None:
                ax.plot(
                    p.recall,
                    p.precision,
                    "o",
                    color=f"C{i + 1}",
                    label=f"{p.target:.0%} precision: score >= {p.threshold:.3g}, "
                    f"recall {p.recall:.1%}",
                )
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"Precision/recall over confidence (IoU 0.5), F1 {ev.f1.total.f1:.3f}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def plot_iou_hist(ev: Evaluation, path: Path) -> None:
    """Draw the histogram of IoU of the matched pairs.

    Args:
        ev: The evaluation.
        path: The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ious = ev.f1.matches[2]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        ax.hist(ious, bins=np.linspace(0.5, 1.0, 26), color="C0", edgecolor="white")
        med = f", median {np.median(ious):.3f}" if len(ious) else ""
        ax.set_title(f"IoU of {len(ious):,} matched pairs{med}")
        ax.set_xlabel("IoU")
        ax.set_ylabel("pairs")
        ax.set_xlim(0.5, 1.0)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def prepare_out_dir(out: Path, *, overwrite: bool = False) -> Path:
    """Create the output folder; refuse a non-empty one unless ``overwrite``.

    Args:
        out: The folder.
        overwrite: Allow writing into a folder that already holds files (only the report's
            own files are replaced; nothing else is deleted).

    Returns:
        The folder.

    Raises:
        OutputExistsError: If the folder exists, is not empty, and ``overwrite`` is False.
    """
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; give another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out} exists and is not empty; give another --out, or --overwrite to replace "
            "its report files"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_report(
    ev: Evaluation, out: Path, *, pred: str = "", truth: str = "", overwrite: bool = False
) -> list[Path]:
    """Write metrics.json, report.md, pr_curve.png and iou_hist.png into ``out``.

    Args:
        ev: The evaluation.
        out: The output folder (created; see :func:`prepare_out_dir`).
        pred: PRED's path, recorded in the report.
        truth: TRUTH's path, recorded in the report.
        overwrite: Allow a non-empty folder.

    Returns:
        The paths written.
    """
    out = prepare_out_dir(Path(out), overwrite=overwrite)
    paths = [out / name for name in FILES]
    doc = metrics_dict(ev, pred=pred, truth=truth)
    paths[0].write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(ev, pred=pred, truth=truth), encoding="utf-8")
    plot_pr_curve(ev, paths[2])
    plot_iou_hist(ev, paths[3])
    return paths
