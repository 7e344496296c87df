"""Decode and polygonize, this tree against an earlier commit: ``python -m bench.postprocess_rev``.

The shipped model's logits on dense real tiles (the sample mirrored, ``bench.imagery``) are
computed once; then each side, in its own fresh process, decodes them (``heads.decode``) and
keeps each tile's footprints (``postprocess.owned_footprints``: polygonize, ownership, shard
keys), alternating sides for ``--rounds`` rounds; CPU seconds per tile, best round. It also times
the two library calls polygonize cannot avoid, GDAL's polygonizer and GEOS's topology-preserving
simplification, as a floor. REV is checked out with ``git worktree`` in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, machine, worktree

_CHILD = """
import json, pickle, sys, time
root, data_path = sys.argv[1], sys.argv[2]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, root)
from open_buildings.geo import grid
from open_buildings.models import heads
from open_buildings.pipelines import postprocess
assert heads.__file__.startswith(root), heads.__file__
data = pickle.load(open(data_path, "rb"))
tiles = [grid.Tile(t, grid.GridSpec()) for t, _, _ in data]
start = time.process_time()
decoded = [heads.decode(logits, from_logits=True) for _, logits, _ in data]
decode = time.process_time() - start
start = time.process_time()
rows = sum(
    len(postprocess.owned_footprints(tile, labels, conf, valid))
    for tile, (labels, conf), (_, _, valid) in zip(tiles, decoded, data)
)
polygonize = time.process_time() - start
n = len(data)
print(json.dumps({"decode": decode / n, "polygonize": polygonize / n, "rows": rows}))
"""


def dense_logits(folder: Path, tiles: int) -> Path:
    """Pickle ``(tile id, logits, valid)`` of ``tiles`` dense tiles; return the file."""
    from bench.imagery import mirrored_imagery, sample_center, square_region
    from bench.infer import region_tiles, worker_model
    from open_buildings.pipelines import runtime

    imagery = mirrored_imagery(folder / "mirrored.tif", 2.6)
    region = square_region(*sample_center(), 1.0, folder / "region.geojson")
    model, _, _ = worker_model()
    out = [
        (tile.id, runtime.run_model(model, [image.rgb])[0], image.valid)
        for tile, image in region_tiles(region, str(imagery))[:tiles]
    ]
    path = folder / "logits.pkl"
    path.write_bytes(pickle.dumps(out))
    return path


def library_floor(data_path: Path) -> dict[str, float]:
    """CPU seconds per tile of GDAL's polygonizer and GEOS's simplification on the decoded tiles."""
    return polygonize_floor(pickle.loads(data_path.read_bytes()))


def polygonize_floor(data: list) -> dict[str, float]:
    """CPU seconds per tile of the two library calls polygonize cannot skip (GDAL's polygonizer,
    GEOS's topology-preserving simplification) on ``(tile id, logits, valid)`` decoded."""
    import numpy as np
    import rasterio.features
    import shapely

    from open_buildings.geo import grid
    from open_buildings.geo.polygonize import _polygons_metric
    from open_buildings.models import heads

    gdal = simplify = 0.0
    for tile_id, logits, valid in data:
        labels = np.where(valid, heads.decode(logits)[0], 0).astype(np.int32)
        start = time.process_time()
        list(rasterio.features.shapes(labels, mask=labels != 0, connectivity=4))
        gdal += time.process_time() - start
        _, polygons = _polygons_metric(labels, grid.Tile(tile_id).grid.transform, simplify_m=0)
        start = time.process_time()
        shapely.simplify(polygons, 0.5, preserve_topology=True)
        simplify += time.process_time() - start
    return {"gdal_shapes": gdal / len(data), "geos_simplify": simplify / len(data)}


def main(argv: list[str] | None = None) -> None:
    """Print both sides' CPU seconds per tile and their ratios, as JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.postprocess_rev", description=__doc__)
    p.add_argument("rev", help="the earlier commit, e.g. d30f471^ (before the decode speed-up)")
    p.add_argument("--tiles", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = dense_logits(folder, args.tiles)
        with worktree(args.rev, folder / "old") as old:
            best: dict[str, dict[str, float]] = {}
            for _ in range(args.rounds):
                for side, root in (("before", old), ("this tree", ROOT)):
                    cmd = [sys.executable, "-c", _CHILD, str(root), str(data)]
                    got = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                    text=True).stdout.splitlines()[-1])  # fmt: skip
                    mine = best.setdefault(side, got)
                    for key in ("decode", "polygonize"):
                        mine[key] = min(mine[key], got[key])
        floor = library_floor(data)
    before, now = best["before"], best["this tree"]
    print(json.dumps({
        "machine": machine(), "rev": args.rev, "tiles": args.tiles,
        "cpu_s_per_tile": best, "library_floor_cpu_s_per_tile": floor,
        "speed-up": {k: round(before[k] / now[k], 2) for k in ("decode", "polygonize")},
        "same_rows": before["rows"] == now["rows"],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
