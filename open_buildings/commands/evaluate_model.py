"""``ob-eval-model MODEL --imagery SRC --truth LABELS``: a model scored as a user would get it.

It runs ``ob-infer`` over each labelled area with the model's defaults (clipped to the region),
keeping every prediction, and scores them once with ``ob-eval``'s metrics (several areas are
pooled, each matched in its own UTM zone). From that one
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

from open_buildings.commands import add_version, run_command
from open_buildings.commands import infer as ob_infer
from open_buildings.errors import ConfigError, InferenceError, OutputExistsError


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
        choices=["auto", "torch", "onnxruntime", "openvino-bf16"],
        default="auto",
        help="how ob-infer runs the model on the CPU (as its --backend)",
    )
    p.add_argument("--out", metavar="FILE", help="also write the figures here as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ob-eval-model``; return the exit status (0 ok, 2 bad input)."""
    return run_command("ob-eval-model", _evaluate_model, parser().parse_args(argv))


def _evaluate_model(args: argparse.Namespace) -> int:
    from open_buildings.evaluation.evaluate import evaluate_areas
    from open_buildings.evaluation.thresholds import at_threshold, best_f1
    from open_buildings.geo.imagery import open_imagery
    from open_buildings.pipelines.runtime import resolve_min_confidence, resolve_model

    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise OutputExistsError(f"{out} exists; choose another --out")
    if len(args.truth) != len(args.imagery) or len(args.region or args.imagery) != len(
        args.imagery
    ):
        raise ConfigError(
            "give one --truth (and one --region, or none at all) per --imagery, in the same order"
        )
    model = resolve_model(args.model)
    threshold, source = resolve_min_confidence(model, "auto")
    with tempfile.TemporaryDirectory(prefix="ob-eval-model-") as tmp:
        areas, regions = [], []
        for i, (imagery, truth) in enumerate(zip(args.imagery, args.truth)):
            given = args.region[i] if args.region else None
            region = given or write_bbox_region(
                open_imagery(imagery).bounds_lonlat(), Path(tmp) / f"{i}.json"
            )
            footprints = Path(tmp) / f"footprints{i}"
            argv = [region, "--imagery", imagery, "--model", args.model, "--out", str(footprints)]
            argv += ["--min-confidence", "0", "--no-progress", "--backend", args.backend]
            argv += ["--tta"] if args.tta else []
            if ob_infer.main(argv) != 0:
                raise InferenceError(f"ob-infer failed on {imagery}; see its message above")
            areas.append((str(footprints), truth, region))
            regions.append(given)
        result = evaluate_areas(areas)
    default = at_threshold(result.curve, threshold)
    best = best_f1(result.curve)
    figures = {
        "model": args.model,
        "threshold": threshold,
        "threshold_source": source,
        "default_output": default,
        "best_f1": best,
        "ap50": result.coco.ap50,
        "ap": result.coco.ap,
        "n_truth": result.n_truth,
        "n_pred_all": result.n_pred,
        "tta": args.tta,
        "backend": args.backend,
        "areas": [
            {"imagery": a, "truth": t, "region": r}  # None: the imagery's bounding box
            for a, t, r in zip(args.imagery, args.truth, regions)
        ],
    }
    print(
        f"default output (confidence >= {threshold:.3f}): F1 {default['f1']:.3f} "
        f"(precision {default['precision']:.3f}, recall {default['recall']:.3f}, "
        f"{default['n_pred']} footprints)"
    )
    if best is not None:
        print(
            f"best F1 over thresholds: {best['f1']:.3f} at >= {best['threshold']:.3f} "
            f"(precision {best['precision']:.3f}, recall {best['recall']:.3f})"
        )
    ap50 = "n/a" if result.coco.ap50 is None else f"{result.coco.ap50:.3f}"
    ap = "n/a" if result.coco.ap is None else f"{result.coco.ap:.3f}"
    print(f"AP50 {ap50}, AP {ap}; {result.n_truth} labels, {result.n_pred} predictions in all")
    print(f"threshold: {source}", file=sys.stderr)
    if out is not None:
        out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


def write_bbox_region(bounds: tuple[float, float, float, float], path: str | Path) -> str:
    """Write a lon/lat bounding box (e.g. an imagery source's ``bounds_lonlat()``) as a region.

    The box goes through ``geo.regions.region_from_bbox``, so it is checked the same way.

    Returns:
        The path written, for ``ob-infer REGION``.
    """
    import shapely

    from open_buildings.geo.regions import region_from_bbox

    region = region_from_bbox(*bounds)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(shapely.geometry.mapping(region.geometry), handle)
    return str(path)
