"""ob-change's baseline on the LEVIR-CD samples: pixel and object F1 of the buildings that appeared.

Each LEVIR-CD pair (256 x 256 px at 0.5 m, ``A/`` before, ``B/`` after, ``label/`` white where a
building appeared) has no georeference, so each is written as two GeoTIFFs at a made-up place
(UTM zone 33N, 0.5 m pixels, one square kilometre apart per pair): the georeference is only the
container ``ob-change`` needs, the metrics are computed back on the 256 x 256 pixel grid.
``ob-change`` runs as a user would (default model and threshold); its ``new`` buildings are
rasterised and scored against the label:

- pixel F1: new-building pixels against appeared-building pixels, pooled over the pairs;
- object F1: the label's connected components against the new footprints, one-to-one at
  IoU >= 0.5 (the evaluation module's greedy matching), pooled.

LEVIR-CD is for academic use only: it is read from ``../shared/data`` at run time and never
copied into the repository.

With ``--change-model W``, ``ob-change`` runs with that change model, and the ``new`` buildings
it confirms (``change_confidence >= t``, for each ``t`` of :data:`CONFIRM_AT`) are scored too
(``confirmed``; a sweep read on these test pairs, not a tuned threshold).

    python -m bench.change_levir [--data ../shared/data/multidate/levir_cd_samples] [--out FILE]
        [--change-model W]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from PIL import Image
from rasterio.features import rasterize
from rasterio.transform import from_origin

from open_buildings.commands import change as ob_change
from open_buildings.commands.evaluate_model import write_bbox_region
from open_buildings.evaluation.change_scores import ChangeCounts, count_change

CRS = "EPSG:32633"
CONFIRM_AT = (0.1, 0.2, 0.3, 0.4, 0.5)
PIXEL = 0.5


def _write(rgb: np.ndarray, path: Path, x0: float, y0: float) -> None:
    h, w = rgb.shape[:2]
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8",
               "crs": CRS, "transform": from_origin(x0, y0, PIXEL, PIXEL)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb[..., :3], -1, 0))
        dst.colorinterp = [rasterio.enums.ColorInterp[c] for c in ("red", "green", "blue")]


def _pair(root: Path, name: str, index: int, work: Path, change_model: str | None) -> dict:
    before = np.array(Image.open(root / "A" / name).convert("RGB"))
    after = np.array(Image.open(root / "B" / name).convert("RGB"))
    truth = np.array(Image.open(root / "label" / name).convert("L")) > 127
    x0, y0 = 400_000.0 + 1_000 * index, 1_000_000.0
    folder = work / name.removesuffix(".png")
    folder.mkdir()
    _write(before, folder / "A.tif", x0, y0)
    _write(after, folder / "B.tif", x0, y0)
    w, s, e, n = gpd.GeoSeries(
        gpd.points_from_xy([x0, x0 + 256 * PIXEL], [y0 - 256 * PIXEL, y0]), crs=CRS
    ).to_crs("EPSG:4326").total_bounds  # fmt: skip
    region = write_bbox_region((float(w), float(s), float(e), float(n)), folder / "region.json")
    out = folder / "change"
    argv = [region, "--imagery", f"2012-01-01={folder / 'A.tif'}", "--imagery",
            f"2016-01-01={folder / 'B.tif'}", "--out", str(out), "--quiet"]  # fmt: skip
    argv += ["--change-model", change_model] if change_model else []
    if ob_change.main(argv) != 0:
        raise SystemExit(f"ob-change failed on {name}")
    found = gpd.read_parquet(out / "change.parquet").to_crs(CRS)
    new = found[found["change"] == "new"]
    pred = _raster(new.geometry, truth.shape, from_origin(x0, y0, PIXEL, PIXEL))
    row = {}
    for t in CONFIRM_AT if change_model else ():
        sure = new[new["change_confidence"] >= t]
        sure_pred = _raster(sure.geometry, truth.shape, from_origin(x0, y0, PIXEL, PIXEL))
        row.setdefault("confirmed", {})[t] = count_change(
            sure_pred > 0, truth, pred_objects=sure_pred
        )
    return {
        **row,
        "pair": name,
        "counts": count_change(pred > 0, truth, pred_objects=pred),
        "removed": int((found["change"] == "removed").sum()),
        "unchanged": int((found["change"] == "unchanged").sum()),
    }


def _raster(geoms, shape: tuple[int, int], transform) -> np.ndarray:
    shapes = [(g, i + 1) for i, g in enumerate(geoms)]
    if not shapes:
        return np.zeros(shape, dtype="int32")
    return rasterize(shapes, out_shape=shape, transform=transform, dtype="int32")


def main() -> None:
    """Run ob-change on every labelled pair and print (and write) the pooled scores."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/multidate/levir_cd_samples")
    parser.add_argument("--out", help="also write the figures here as JSON")
    parser.add_argument("--change-model", help="also run ob-change --change-model")
    args = parser.parse_args()
    root = Path(args.data)
    names = sorted(p.name for p in (root / "label").glob("*.png"))
    with tempfile.TemporaryDirectory(prefix="ob-levir-") as tmp:
        rows = [_pair(root, name, i, Path(tmp), args.change_model) for i, name in enumerate(names)]
    total = sum((r["counts"] for r in rows), ChangeCounts())
    confirmed = [r.pop("confirmed") for r in rows if "confirmed" in r]
    result = {
        "pairs": len(rows),
        **total.scores(),
        "totals": {**vars(total), **{k: sum(r[k] for r in rows) for k in ("removed", "unchanged")}},
        "rows": [{**r, "counts": vars(r["counts"])} for r in rows],
    }
    if args.change_model:
        result["change_model"] = args.change_model
        result["confirmed"] = {
            str(t): sum((c[t] for c in confirmed), ChangeCounts()).scores() for t in CONFIRM_AT
        }
    for r in rows:
        c = r["counts"]
        print(f"{r['pair']}: appeared {c.truth_obj} (label), new {c.pred_obj}, matched "
              f"{c.tp_obj}; removed {r['removed']}, unchanged {r['unchanged']}")  # fmt: skip
    sweep = [(f"confirmed at {t} ", scores) for t, scores in result.get("confirmed", {}).items()]
    for key in ("pixel", "object_iou50"):
        for label, scores in [("", result), *sweep]:
            s = scores[key]
            print(f"{label}{key}: P {s['precision']:.3f} R {s['recall']:.3f} F1 {s['f1']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
