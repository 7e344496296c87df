"""Does polygon regularisation make better footprints? F1 and IoU on the validation blocks.

``python -m bench.regularise [--model W.safetensors] [-o data_root=...]`` runs a model (the
default one unless given) over the validation blocks of ``pipelines/train/default/base.yaml``
(whole tiles of Banepa, Zanzibar and Nairobi it never trained on; the pipeline's own functions,
at the model's calibrated threshold), then scores its footprints against the OSM labels as they
are and after
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

BLOCKS = ROOT / "pipelines" / "train" / "default" / "base.yaml"


def _score(preds, truths, crss):
    from open_buildings.evaluation.evaluate import evaluate
    from open_buildings.training.validate import _footprints

    result = evaluate(
        _footprints(preds, crss, True, "prediction"),
        _footprints(truths, crss, False, "label"),
        cap_per_image=False,
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
    """Score a model's validation-block footprints raw and regularised; print the table."""
    from open_buildings.config import load_config
    from open_buildings.geo.grid import GridSpec, Tile
    from open_buildings.models import heads
    from open_buildings.models.checkpoint import load_checkpoint, read_operating_points
    from open_buildings.pipelines.config import PostprocessConfig
    from open_buildings.pipelines.postprocess import owned_footprints
    from open_buildings.pipelines.runtime import run_model
    from open_buildings.training.batches import load_areas
    from open_buildings.training.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("-o", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tta", action="store_true", help="predict with test-time augmentation")
    args = parser.parse_args(argv)
    cfg = load_config(TrainConfig, BLOCKS, args.o)
    spec = GridSpec(level=cfg.grid_level)
    scenes = load_areas(cfg, cfg.val, labelled=True)
    model = load_checkpoint(args.model)
    threshold = read_operating_points(Path(args.model))["best_f1"]["threshold"]
    post = PostprocessConfig(min_confidence=threshold)
    preds, truths = [], []
    for scene in scenes:
        tile = Tile(scene.tile_id, spec)
        instances, confidence = heads.decode(run_model(model, [scene.rgb], tta=args.tta)[0])
        preds.append(
            owned_footprints(tile, instances, confidence, scene.valid, post).to_crs(scene.grid.crs)
        )
        truths.append(
            owned_footprints(tile, scene.instances, None, scene.valid).to_crs(scene.grid.crs)
        )
    crss = [scene.grid.crs for scene in scenes]
    print(machine())
    print(
        f"{args.model}: validation blocks ({', '.join(a.name for a in cfg.val)}): "
        f"{len(scenes)} tiles, threshold {threshold:.3f}{', TTA' if args.tta else ''}"
    )
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
        r = _score(frames, truths, crss)
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
