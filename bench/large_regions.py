"""Large regions: reading and counting tiles, this tree against an earlier commit.

``python -m bench.large_regions [REV] [--repeats N]`` writes two generated regions (issue #14
item 8): 100,000 building-sized squares over a 33 km square near Nairobi (a FeatureCollection of
about 30 MB) and one polygon of 1,000,000 vertices; then times ``read_region`` and
``count_tiles`` (level 14) on each, in a fresh interpreter per run, alternating this tree and
REV's code (checked out with ``git worktree``, as ``bench.before_after`` does) so that both see
the same machine load. It prints the seconds of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from bench.common import ROOT, worktree

_TIME = """
import json, sys, time
from open_buildings.geo.regions import read_region
from open_buildings.geo.grid import count_tiles
start = time.perf_counter()
region = read_region(sys.argv[1])
read = time.perf_counter() - start
start = time.perf_counter()
tiles = count_tiles(region.geometry)
print(json.dumps({"read": read, "count": time.perf_counter() - start, "tiles": tiles,
                  "km2": region.area_km2}))
"""


def write_regions(folder: Path) -> dict[str, Path]:
    """Write the two generated regions (seeded) and return their paths by name."""
    rng = np.random.default_rng(0)
    xs, ys, d = 36.80 + rng.uniform(0, 0.3, 100_000), -1.40 + rng.uniform(0, 0.3, 100_000), 1e-4
    features = [
        {
            "type": "Feature",
            "properties": {},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]],
            },
        }
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True)
    ]
    squares = folder / "squares_100k.geojson"
    squares.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    t = np.linspace(0, 2 * np.pi, 1_000_000, endpoint=False)
    r = 0.05 * (1 + 0.3 * np.sin(40 * t))
    ring = np.c_[36.80 + r * np.cos(t), -1.40 + r * np.sin(t)].tolist()
    million = folder / "polygon_1m_vertices.geojson"
    million.write_text(json.dumps({"type": "Polygon", "coordinates": [[*ring, ring[0]]]}))
    return {"100k squares": squares, "1M-vertex polygon": million}


def time_tree(tree: Path, region: Path) -> dict[str, float]:
    """Time read_region and count_tiles on ``region`` with the code in ``tree``."""
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", _TIME, str(region)],
        capture_output=True,
        text=True,
        env=env,
        cwd=region.parent,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"timing with {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.large_regions")
    parser.add_argument("rev", nargs="?", help="an earlier commit to compare with")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ob-large-") as tmp:
        folder = Path(tmp)
        regions = write_regions(folder)
        with ExitStack() as stack:
            trees = {"this tree": ROOT}
            if args.rev:
                trees = {args.rev: stack.enter_context(worktree(args.rev, folder / "old")), **trees}
            for name, path in regions.items():
                runs: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
                for _ in range(args.repeats):
                    for label, tree in trees.items():
                        runs[label].append(time_tree(tree, path))
                for label, results in runs.items():
                    best = {k: min(r[k] for r in results) for k in ("read", "count")}
                    print(f"{name:18} {label:10} read {best['read']:7.1f} s  count_tiles "
                          f"{best['count']:7.1f} s  tiles {results[0]['tiles']:,}  "
                          f"{results[0]['km2']:.3f} km2")  # fmt: skip
                if args.rev:
                    old_r, new_r = runs[args.rev], runs["this tree"]
                    for k in ("read", "count"):
                        ratio = min(r[k] for r in old_r) / min(r[k] for r in new_r)
                        print(f"{name:18} {k}: {ratio:.1f}x faster")


if __name__ == "__main__":
    main()
