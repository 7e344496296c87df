"""Peak memory against the number of tiles, this tree against an earlier commit's code:
``python -m bench.memory_tiles REV [--km2 5.4 21.7] [--rounds 2]``.

Each side runs ``ob-infer`` (default model, fresh process; ``bench.before_after.run_tree``) on
square regions of dense mirrored imagery (``bench.imagery``), the two sides alternating within
each round. Per side and region: the peak RSS (min over rounds: the machine is shared), and the
growth per extra tile between the smallest and the largest region. The CSVs must be identical.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.before_after import run_tree
from bench.common import ROOT, machine, worktree
from bench.imagery import mirrored_imagery, sample_center, square_region


def main(argv: list[str] | None = None) -> None:
    """Print peak RSS per region and side, and MiB per extra tile."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the earlier commit")
    parser.add_argument("--km2", type=float, nargs="+", default=[5.4, 21.7])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    from open_buildings.geo import grid, regions

    peaks: dict[str, dict[float, list[float]]] = {"before": {}, "after": {}}
    tiles: dict[float, int] = {}
    identical = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        imagery = mirrored_imagery(folder / "m.tif", max(args.km2) ** 0.5 + 1.6)
        lon, lat = sample_center()
        with worktree(args.rev, folder / "before") as before:
            for k in range(args.rounds):
                for km2 in args.km2:
                    region = square_region(lon, lat, km2, folder / f"r{km2}.geojson")
                    tiles[km2] = grid.count_tiles(regions.read_region(region).geometry)
                    got = {}
                    for side, tree in (("before", before), ("after", ROOT)):
                        out = folder / f"{side}{km2}-{k}"
                        got[side] = run_tree(tree, region, imagery, out)
                        peaks[side].setdefault(km2, []).append(got[side]["rss_mib"])
                    identical &= got["before"]["md5"] == got["after"]["md5"]
                    print(
                        f"round {k}, {km2} km2 ({tiles[km2]} tiles): peak RSS before "
                        f"{got['before']['rss_mib']:.0f} MiB, after {got['after']['rss_mib']:.0f}",
                        flush=True,
                    )
    small, large = min(args.km2), max(args.km2)
    result = {"machine": machine(), "rev": args.rev, "tiles": tiles, "csv_identical": identical}
    for side in ("before", "after"):
        best = {km2: min(v) for km2, v in peaks[side].items()}
        slope = (best[large] - best[small]) / (tiles[large] - tiles[small])
        growth = 100 * (best[large] / best[small] - 1)
        result[side] = {"peak_mib": best, "mib_per_tile": slope, "growth_pct": growth}
        print(
            f"{side}: "
            + ", ".join(f"{km2} km2 {best[km2]:.0f} MiB" for km2 in args.km2)
            + f"; {slope:.2f} MiB per extra tile; "
            f"{growth:+.1f}% from {tiles[small]} to {tiles[large]} tiles"
        )
    print(f"CSV identical on every run: {identical}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
