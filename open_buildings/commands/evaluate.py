"""``ob-eval --pred PRED --truth TRUTH [--region REGION] [--out DIR]``: score footprints."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import add_version, run_command
from open_buildings.evaluation import io, report
from open_buildings.evaluation.evaluate import evaluate_files


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-eval`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-eval",
        description="Score building footprints against ground truth: COCO instance mAP, "
        "SpaceNet F1, and the confidence thresholds reaching 80/85/90% precision.",
    )
    add_version(p)
    p.add_argument(
        "--pred",
        required=True,
        help="predictions: footprint folder (.csv.gz/.parquet), GeoJSON or SpaceNet CSV",
    )
    p.add_argument("--truth", required=True, help="ground truth, in any of the same formats")
    p.add_argument("--region", help="region GeoJSON: clip both to it before scoring")
    p.add_argument(
        "--region-rule",
        choices=["cut", "centroid"],
        default="cut",
        help="how --region picks footprints: cut (default: both sides cut at its edge) or "
        "centroid (only those whose centroid lies in it, on both sides, then cut: ob-infer's "
        "rule, so its output of the same region is not charged for its neighbours' buildings)",
    )
    p.add_argument("--out", help="output folder (default: a new eval-<timestamp> folder)")
    p.add_argument(
        "--overwrite", action="store_true", help="write into --out even if it is not empty"
    )
    p.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        help="SpaceNet min_area, in the compared units squared (SpaceNet 2 used 20 px)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out damaged shard rows and files, and polygons with NaN vertices, with a "
        "warning that counts them (default: stop at the first, naming it)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-eval``; return the exit status (0 ok, 2 bad input or existing output).

    Args:
        argv: Command-line arguments (None: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    return run_command("ob-eval", _evaluate, parser().parse_args(argv))


def _evaluate(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists():
        report.prepare_out_dir(out, overwrite=args.overwrite)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", io.EvaluationWarning)
        ev = evaluate_files(
            args.pred,
            args.truth,
            region_path=args.region,
            min_area=args.min_area,
            skip_bad=args.skip_bad,
            by_centroid=args.region_rule == "centroid",
        )
    for w in caught:
        print(f"ob-eval: warning: {w.message}", file=sys.stderr)
    paths = report.write_report(ev, out, pred=args.pred, truth=args.truth, overwrite=args.overwrite)
    print(report.summary(ev))
    print(f"\nwrote {', '.join(p.name for p in paths)} to {out}/")
    return 0
