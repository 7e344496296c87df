"""ob-infer throughput and memory: ``python -m bench.infer [--model NAME|PATH]``.

1. **Throughput.** ``ob-infer`` on the embedded sample (its own process), against the model-only
   forward time of the same tiles measured in this process: the ratio is the pipeline overhead
   (reading, resampling, decoding, polygonizing, writing, Beam). km²/hour counts tile *cores*: the
   model runs on every tile that has any imagery, whatever share of it is covered, so a tile's
   cost does not depend on its coverage.
2. **Memory.** Peak RSS of ``ob-infer`` (each run in a fresh process) on square regions of 1 km²
   and 16 km² centred on the sample. The sample imagery covers about 0.3 km², so most tiles of the
   larger regions have no imagery and are skipped after the read; the figure shows that covering,
   reading and writing stream, not the memory of 16 km² of dense inference.

Every figure comes from this one run; ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "geo" / "sample"

_CHILD = """
import resource, sys, time
from open_buildings.cli import infer_main
start = time.perf_counter()
code = infer_main(sys.argv[1:])
print("BENCH", time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def run_ob_infer(region: Path, model: str, out: Path) -> tuple[float, float]:
    """Run ob-infer in a fresh process; return (seconds inside ob-infer, peak RSS in MiB)."""
    cmd = [
        sys.executable,
        "-c",
        _CHILD,
        str(region),
        "--imagery",
        str(SAMPLE / "items.json"),
        "--model",
        model,
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ob-infer failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH"))
    _, seconds, maxrss_kib = line.split()
    return float(seconds), float(maxrss_kib) / 1024


def square_region(center_lon: float, center_lat: float, km2: float, path: Path) -> Path:
    """Write a square region of ``km2`` around a point as GeoJSON."""
    half_km = math.sqrt(km2) / 2
    dlat = half_km / 110.574
    dlon = half_km / (111.320 * math.cos(math.radians(center_lat)))
    w, e = center_lon - dlon, center_lon + dlon
    s, n = center_lat - dlat, center_lat + dlat
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    return path


def model_only_seconds(model_ref: str, region: Path) -> tuple[float, int, float]:
    """Forward time of the model alone on the sample's non-empty tiles (read beforehand).

    Returns (seconds, tiles, core km² of those tiles).
    """
    from pyproj import Geod

    from open_buildings.geo import grid, imagery, regions
    from open_buildings.models.checkpoint import load_checkpoint
    from open_buildings.pipelines.inference import resolve_model
    from open_buildings.pipelines.stages import run_model

    source = imagery.open_imagery(str(SAMPLE / "items.json"))
    tiles = [t for t in grid.cover(regions.read_region(region).geometry)]
    images = [source.read(t.grid) for t in tiles]
    keep = [(t, im) for t, im in zip(tiles, images) if not im.empty]
    path = resolve_model(model_ref).path  # the same lookup ob-infer uses (zoo, file, folder)
    model = load_checkpoint(path).eval()
    geod = Geod(ellps="WGS84")
    core_km2 = sum(abs(geod.geometry_area_perimeter(t.core)[0]) for t, _ in keep) / 1e6
    run_model(model, [keep[0][1].rgb], device=torch.device("cpu"), bf16=False)  # warm-up
    start = time.perf_counter()
    for _, im in keep:
        run_model(model, [im.rgb], device=torch.device("cpu"), bf16=False)
    return time.perf_counter() - start, len(keep), core_km2


def main(argv: list[str] | None = None) -> None:
    """Print the throughput and memory table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="zoo name or .safetensors path")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    region = SAMPLE / "region.geojson"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        seconds, rss = run_ob_infer(region, args.model, tmp_path / "sample")
        forward, n_tiles, core_km2 = model_only_seconds(args.model, region)
        center = json.loads(region.read_text())["features"][0]["geometry"]["coordinates"][0]
        lon = float(np.mean([p[0] for p in center[:-1]]))
        lat = float(np.mean([p[1] for p in center[:-1]]))
        mem = {}
        for km2 in (1, 16):
            r = square_region(lon, lat, km2, tmp_path / f"r{km2}.geojson")
            mem[km2] = run_ob_infer(r, args.model, tmp_path / f"out{km2}")
    print(f"ob-infer on the sample: {n_tiles} tiles with imagery, {core_km2:.3f} km2 of tile cores")
    print("| measurement | value | ratio |")
    print("|---|---|---|")
    print(
        f"| ob-infer wall time (sample) | {seconds:.1f} s | {seconds / forward:.2f}x model-only |"
    )
    print(f"| model-only forward, same tiles | {forward:.1f} s | 1.00x |")
    print(
        f"| throughput | {core_km2 / seconds * 3600:.2f} km2/h of tile cores "
        f"({n_tiles / seconds * 3600:.0f} tiles/h) | - |"
    )
    print(f"| peak RSS, 1 km2 region | {mem[1][1]:.0f} MiB ({mem[1][0]:.1f} s) | 1.00x |")
    print(
        f"| peak RSS, 16 km2 region | {mem[16][1]:.0f} MiB ({mem[16][0]:.1f} s) | "
        f"{mem[16][1] / mem[1][1]:.2f}x |"
    )


if __name__ == "__main__":
    main()
