"""Does polygon regularisation make better footprints? F1 and IoU on held-out Nairobi, both ways.

``python -m bench.regularise [--data ../shared/data]`` runs the default model over the Nairobi
tiles it never trained on (the pipeline's own functions, at the model's calibrated threshold),
then scores its footprints against the OSM labels as they are and after
``buildingregulariser.regularize_geodataframe`` (orthogonal edges; in the tiles' UTM zone).
It prints SpaceNet F1 (IoU >= 0.5), precision, recall, the mean IoU of the matched pairs, AP50
and the median vertex count, for each variant, and the time regularisation took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import DEFAULT_WEIGHTS, ROOT, machine


def _score(preds, truths, crs):
    from open_buildings.evaluation.evaluate import evaluate
    from open_buildings.training.validate import _footprints

    result = evaluate(
        _footprints(preds, crs, True, "prediction"), _footprints(truths, crs, False, "label")
    )
    _, _, ious = result.f1.matches
    vertices = [
        len(g.exterior.coords) - 1 for f in preds for g in f.geometry if g.geom_type == "Polygon"
    ]
    return {
        "f1": result.f1.total.f1,
        "precision": result.f1.total.precision,
        "recall": result.f1.total.recall,
        "mean_iou": float(np.mean(ious)) if len(ious) else 0.0,
        "ap50": result.coco.ap50,
        "median_vertices": float(np.median(vertices)) if vertices else 0.0,
        "n_pred": result.n_pred,
    }


def main(argv: list[str] | None = None) -> None:
    """Score the default model's Nairobi footprints raw and regularised; print the table."""
    from open_buildings.geo.grid import GridSpec, Tile
    from open_buildings.geo.imagery import open_imagery
    from open_buildings.models import heads
    from open_buildings.models.checkpoint import load_checkpoint, read_operating_points
    from open_buildings.pipelines.config import PostprocessConfig
    from open_buildings.pipelines.postprocess import owned_footprints
    from open_buildings.pipelines.runtime import run_model
    from open_buildings.training.scenes import load_scenes, read_labels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    area = Path(args.data) / "xyz_tiles" / "nairobi_ke"
    spec = GridSpec(level=14)
    scenes = load_scenes(
        "nairobi", open_imagery(str(area)), read_labels(area / "labels.geojson"), spec
    )
    model = load_checkpoint(DEFAULT_WEIGHTS)
    threshold = read_operating_points(DEFAULT_WEIGHTS)["best_f1"]["threshold"]
    post = PostprocessConfig(min_confidence=threshold)
    preds, truths = [], []
    for scene in scenes:
        tile = Tile(scene.tile_id, spec)
        instances, confidence = heads.decode(run_model(model, [scene.rgb])[0])
        preds.append(
            owned_footprints(tile, instances, confidence, scene.valid, post).to_crs(scene.grid.crs)
        )
        truths.append(
            owned_footprints(tile, scene.instances, None, scene.valid).to_crs(scene.grid.crs)
        )
    crs = scenes[0].grid.crs
    print(machine())
    print(f"Nairobi (held out): {len(scenes)} tiles, threshold {threshold:.3f}")
    variants = {
        "as polygonized": None,
        "library defaults": {},
        "no circles": {"allow_circles": False},
        "orthogonal only": {"allow_circles": False, "allow_45_degree": False},
        "coarser (1 m, 2 m)": {
            "allow_circles": False,
            "simplify_tolerance": 1.0,
            "parallel_threshold": 2.0,
        },
    }
    for name, options in variants.items():
        started = time.perf_counter()
        frames = preds if options is None else [_regularised(f, options) for f in preds]
        seconds = time.perf_counter() - started
        r = _score(frames, truths, crs)
        print(
            f"  {name:18} F1 {r['f1']:.3f} (P {r['precision']:.3f} R {r['recall']:.3f})  "
            f"mean IoU of matches {r['mean_iou']:.3f}  AP50 {r['ap50']:.3f}  "
            f"median vertices {r['median_vertices']:.0f}  {seconds:.2f} s"
        )


def _regularised(frame, options: dict):
    import geopandas as gpd
    from buildingregulariser import regularize_geodataframe

    if frame.empty:
        return frame
    frame = frame.reset_index(drop=True)
    # One polygon per call: the library may split a polygon into parts or drop it, and its
    # output index does not say which input a part came from.
    shapes = []
    for geometry in frame.geometry:
        one = gpd.GeoDataFrame(geometry=[geometry], crs=frame.crs)
        out = regularize_geodataframe(one, num_cores=1, **options)
        shapes.append(out.geometry.union_all() if len(out) else geometry)
    return gpd.GeoDataFrame(frame.drop(columns="geometry"), geometry=shapes, crs=frame.crs)


if __name__ == "__main__":
    main()
