"""``ob-eval-model MODEL --imagery SRC --truth LABELS``: a model scored as a user would get it.

It runs ``ob-infer`` over each labelled area with the model's defaults (clipped to the region),
keeping every prediction, and scores them once with ``ob-eval``'s metrics (several areas are
pooled, each matched in its own UTM zone). The truth of a region is ob-infer's rule applied to
the labels: the buildings whose centroid lies in it. From that one
matching it reports the F1 of what ``ob-infer`` writes by default (the predictions at or above
the model's calibrated threshold) next to the best F1 over thresholds, AP50 and AP, so the
figure in a model card is the figure a user sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from open_buildings.commands import add_version, run_command
from open_buildings.commands.run_infer import run_or_raise
from open_buildings.errors import ConfigError, OutputExistsError
from open_buildings.pipelines.torch_runtime import BACKENDS


def parser() -> argparse.ArgumentParser:
    """Return the ``ob-eval-model`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ob-eval-model",
        description="Run ob-infer with a model's defaults over labelled imagery and report the "
        "F1 of its default output next to the best F1 over thresholds and AP50.",
    )
    add_version(p)
    p.add_argument("model", help="zoo name (default) or .safetensors checkpoint")
    p.add_argument(
        "--imagery",
        required=True,
        action="append",
        metavar="SRC",
        help="GeoTIFF/COG, XYZ or STAC; repeat it (with --truth and --region) for more areas",
    )
    p.add_argument(
        "--truth", required=True, action="append", metavar="LABELS", help="building polygons"
    )
    p.add_argument(
        "--region", action="append", help="region GeoJSON (default: the imagery's footprint)"
    )
    p.add_argument(
        "--tta", action="store_true", help="run ob-infer with --tta (flips and quarter turns)"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="how ob-infer runs the model on the CPU (as its --backend)",
    )
    p.add_argument(
        "--decode",
        choices=("auto", "host", "device"),
        default="auto",
        help="where ob-infer decodes the logits (its -o runtime.decode; device needs the model "
        "in PyTorch, e.g. --backend torch)",
    )
    p.add_argument("--out", metavar="FILE", help="also write the figures here as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-eval-model``; return the exit status (0 ok, 2 bad input)."""
    return run_command("ob-eval-model", _evaluate_model, parser().parse_args(argv))


def _evaluate_model(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise OutputExistsError(f"{out} exists; choose another --out")
    if len(args.truth) != len(args.imagery) or len(args.region or args.imagery) != len(
        args.imagery
    ):
        raise ConfigError(
            "give one --truth (and one --region, or none at all) per --imagery, in the same order"
        )
    regions = args.region or [None] * len(args.imagery)
    figures = score_model(
        args.model,
        list(zip(args.imagery, args.truth, regions)),
        backend=args.backend,
        tta=args.tta,
        infer_args=() if args.decode == "auto" else ("-o", f"runtime.decode={args.decode}"),
    )
    default, best = figures["default_output"], figures["best_f1"]
    print(
        f"default output (confidence >= {figures['threshold']:.3f}): F1 {default['f1']:.3f} "
        f"(precision {default['precision']:.3f}, recall {default['recall']:.3f}, "
        f"{default['n_pred']} footprints)"
    )
    if best is not None:
        print(
            f"best F1 over thresholds: {best['f1']:.3f} at >= {best['threshold']:.3f} "
            f"(precision {best['precision']:.3f}, recall {best['recall']:.3f})"
        )
    ap50 = "n/a" if figures["ap50"] is None else f"{figures['ap50']:.3f}"
    ap = "n/a" if figures["ap"] is None else f"{figures['ap']:.3f}"
    print(
        f"AP50 {ap50}, AP {ap}; {figures['n_truth']} labels, {figures['n_pred_all']} "
        "predictions in all"
    )
    print(f"threshold: {figures['threshold_source']}", file=sys.stderr)
    if out is not None:
        out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


def score_model(
    model_spec: str,
    areas: list[tuple[str, str, str | None]],
    *,
    backend: str = "auto",
    tta: bool = False,
    infer_args: Sequence[str] = (),
    quiet: bool = False,
) -> dict[str, Any]:
    """Run ``ob-infer`` with a model's defaults over labelled areas and score the output.

    Args:
        model_spec: ``--model`` as ob-infer takes it (zoo name, checkpoint or model folder).
        areas: ``(imagery, truth, region or None)`` per area; None scores the imagery's box.
        backend: ob-infer's ``--backend``.
        tta: run ob-infer with ``--tta``.
        infer_args: more ob-infer flags (e.g. ``--bands``).
        quiet: keep ob-infer's summaries off the terminal (shown only if it fails).

    Returns:
        ``{"threshold", "threshold_source", "default_output", "best_f1", "ap50", "ap",
        "n_truth", "n_pred_all", ...}``: the F1 of what ob-infer writes by default next to the
        best F1 over thresholds, from one matching.

    Raises:
        InferenceError: ob-infer failed on an area (its message was printed).
    """
    from open_buildings.evaluation.evaluate import evaluate_areas
    from open_buildings.evaluation.thresholds import at_threshold, best_f1
    from open_buildings.geo.imagery import open_imagery
    from open_buildings.pipelines.runtime import resolve_min_confidence, resolve_model

    model = resolve_model(model_spec)
    threshold, source = resolve_min_confidence(model, "auto")
    with tempfile.TemporaryDirectory(prefix="ob-eval-model-") as tmp:
        scored = []
        for i, (imagery, truth, given) in enumerate(areas):
            region = given or write_bbox_region(
                open_imagery(imagery).bounds_lonlat(), Path(tmp) / f"{i}.json"
            )
            footprints = Path(tmp) / f"footprints{i}"
            argv = [region, "--imagery", imagery, "--model", model_spec, "--out", str(footprints)]
            argv += ["--min-confidence", "0", "--no-progress", "--backend", backend]
            argv += (["--tta"] if tta else []) + list(infer_args)
            failure = f"ob-infer failed on {imagery}; see its message above"
            run_or_raise(argv, failure, quiet=quiet)
            scored.append((str(footprints), truth, region))
        result = evaluate_areas(scored, by_centroid=True)
    return {
        "model": model_spec,
        "threshold": threshold,
        "threshold_source": source,
        "default_output": at_threshold(result.curve, threshold),
        "best_f1": best_f1(result.curve),
        "ap50": result.coco.ap50,
        "ap": result.coco.ap,
        "n_truth": result.n_truth,
        "n_pred_all": result.n_pred,
        "tta": tta,
        "backend": backend,
        "infer_args": list(infer_args),
        "areas": [  # region None: the imagery's bounding box
            {"imagery": a, "truth": t, "region": r} for a, t, r in areas
        ],
    }


def write_bbox_region(bounds: tuple[float, float, float, float], path: str | Path) -> str:
    """Write a lon/lat bounding box (e.g. an imagery source's ``bounds_lonlat()``) as a region.

    The box goes through ``geo.regions.region_from_bbox``, so it is checked the same way.

    Returns:
        The path written, for ``ob-infer REGION``.
    """
    from open_buildings.geo.regions import region_from_bbox

    return write_region(region_from_bbox(*bounds).geometry, path)


def write_region(geometry: Any, path: str | Path) -> str:
    """Write a lon/lat shapely geometry as a GeoJSON region file; return the path."""
    import shapely

    with open(path, "w", encoding="utf-8") as handle:
        json.dump(shapely.geometry.mapping(geometry), handle)
    return str(path)
