"""ob-change's baseline on Joplin, Missouri, before (2011-05-20) and after (2011-05-24) the tornado.

Runs ``ob-change`` as a user would (default model and threshold) on where the two dates' imagery
overlap (``pipelines/change/joplin_overlap.geojson``), prints the counts, how well the dates'
footprints overlap, and draws both dates with the buildings coloured by their change
(``bench/results/change_joplin.png``) for reading by eye. The imagery dates are the ones the
shared data's folders stand for (before and after 22 May 2011); the exact days are not recorded.

With ``--change-model W`` (a trained change model), ``ob-change`` also gives every building its
``change_confidence``, the counts the model confirms (>= 0.5) are printed, and the map draws the
changes it confirms solid and the others dotted.

    python -m bench.change_joplin [--data ../shared/data/multidate/joplin_us] [--out DIR]
        [--change-model W]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import geopandas as gpd
import matplotlib
import numpy as np
from affine import Affine
from pyproj import Transformer

from open_buildings.commands import change as ob_change
from open_buildings.evaluation.matching import polygon_ious
from open_buildings.geo.grid import PixelGrid
from open_buildings.geo.imagery_dates import open_dated_imagery
from open_buildings.geo.shard_read import read_footprints

REGION = Path("pipelines/change/joplin_overlap.geojson")
CRS = "EPSG:32615"
COLOURS = {"new": "tab:green", "removed": "tab:red", "unchanged": "yellow"}


def _plot(out: Path, imagery: list[str], figure: Path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dated = open_dated_imagery(imagery)
    w, s, e, n = gpd.read_file(REGION).total_bounds
    to = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    (x0, x1), (y0, y1) = to.transform([w, e], [s, n])
    px = 2.0
    grid = PixelGrid(CRS, Affine(px, 0, x0, 0, -px, y1), int((x1 - x0) / px), int((y1 - y0) / px))
    stack = dated.read(grid)
    found = gpd.read_parquet(out / "change.parquet").to_crs(CRS)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), dpi=90)
    extent = (x0, x0 + grid.width * px, y1 - grid.height * px, y1)
    for k, ax in enumerate(axes):
        ax.imshow(np.moveaxis(stack.rgb[k], 0, -1), extent=extent)
        for change, colour in COLOURS.items():
            part = found[found["change"] == change]
            if "change_confidence" in part and change != "unchanged":
                sure = part["change_confidence"] >= 0.5
                styles = [(sure, "-", 1.6, "confirmed"), (~sure, ":", 0.7, "not confirmed")]
                for keep, style, width, note in styles:
                    subset = part[keep]
                    if len(subset):
                        subset.boundary.plot(
                            ax=ax, color=colour, linewidth=width, linestyle=style,
                            label=f"{change}, {note} ({len(subset)})",
                        )  # fmt: skip
            elif len(part):
                part.boundary.plot(
                    ax=ax, color=colour, linewidth=0.7, label=f"{change} ({len(part)})"
                )
        ax.set_title(f"{stack.dates[k].isoformat()}: ob-change's buildings by change")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(figure)
    plt.close(fig)


def main() -> None:
    """Run ob-change on the overlap, print the figures, draw the map."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/multidate/joplin_us")
    parser.add_argument("--out", default="runs/change/joplin")
    parser.add_argument("--figure", default="bench/results/change_joplin.png")
    parser.add_argument("--change-model", help="also run ob-change --change-model")
    args = parser.parse_args()
    out = Path(args.out)
    imagery = [f"2011-05-20={args.data}/pre", f"2011-05-24={args.data}/post"]
    argv = [str(REGION), "--out", str(out), "--overwrite", "--quiet"]
    argv += ["--change-model", args.change_model] if args.change_model else []
    for spec in imagery:
        argv += ["--imagery", spec]
    if ob_change.main(argv) != 0:
        raise SystemExit("ob-change failed")
    summary = json.loads((out / "change.json").read_text())
    before = read_footprints(out / "dates" / "2011-05-20").to_crs(CRS)
    after = read_footprints(out / "dates" / "2011-05-24").to_crs(CRS)
    pairs = polygon_ious(before.geometry.to_numpy(), after.geometry.to_numpy())
    best = np.zeros(len(before))
    np.maximum.at(best, pairs.pred, pairs.iou)
    print(f"per date: {summary['per_date']}; change: {summary['change']}")
    if args.change_model:
        print(f"confirmed by the change model: {summary['confirmed_by_change_model']}")
    print(
        f"before-footprints overlapping an after-footprint: {np.mean(best > 0):.3f}; "
        f"at IoU >= 0.5: {np.mean(best >= 0.5):.3f}; median area before "
        f"{before['area_in_meters'].median():.0f} m2, "
        f"after {after['area_in_meters'].median():.0f} m2"
    )
    _plot(out, imagery, Path(args.figure))
    print(f"map: {args.figure}")


if __name__ == "__main__":
    main()
