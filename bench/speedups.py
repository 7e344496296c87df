"""Each speed change as a before/after ratio measured in one run: ``python -m bench.speedups``.

* **Model runtime** for the default model on a 512x512 tile: PyTorch contiguous (before) against
  ``channels_last`` and ONNX Runtime (what ``ob-infer`` now uses, ``pipelines.runtime``), and
  ``torch.compile`` with ``--compile`` (its compile time is minutes on 2 cores, so it is opt-in).
* **bf16 autocast** against fp32, on a ``--bf16-tile`` input scaled to 512 (see bench.models).
* **Batch size** 1, 2, 4, 8 tiles per call on the runtime ``ob-infer`` uses: seconds per tile.
* **Margin and tile size.** The compute a margin costs (padded pixels per km² of tile core, on the
  real tiles around the sample) against the buildings it cuts: a building whose centroid lies in a
  core is cut when it reaches further beyond the core than the margin. Over tile positions, the
  expected share cut is the mean over the Nairobi OSM buildings of sum over the four sides of
  ``max(0, reach - margin) / core side``. With ``--margin-runs``, the inference job also runs on
  the sample at several margins and each result is scored against the Nairobi labels (ob-eval).

Every figure comes from this one run; the ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import LABELS, SAMPLE, THREADS, Timing, interleaved, machine
from bench.models import TILE, forward_call, forward_timing, load_default


def runtimes(
    runs: int = 3, size: tuple[int, int] = (TILE, TILE), compile_model: bool = False
) -> dict[str, Timing]:
    """Forward time of one tile of ``size`` for the default model in each runtime (fp32)."""
    from bench.models import variants

    model = load_default()
    x = torch.rand(1, 3, *size)
    nets = variants(model)
    out = interleaved({name: forward_call(net, x) for name, net in nets.items()}, runs)
    if compile_model:
        net = copy.deepcopy(model).to(memory_format=torch.channels_last)
        start = time.perf_counter()
        compiled = torch.compile(net)
        with torch.inference_mode():
            compiled(x)
        out[f"torch.compile (compiling took {time.perf_counter() - start:.0f} s)"] = forward_timing(
            compiled, x, runs
        )
    return out


def bf16_against_fp32(bf16_tile: int = 128) -> dict[str, Any]:
    """bf16 autocast and fp32 forward on the same ``bf16_tile`` input (PyTorch, default model)."""
    from open_buildings.pipelines.runtime import native_bf16

    model = load_default()
    x = torch.rand(1, 3, bf16_tile, bf16_tile)
    fp32 = forward_timing(model, x, 3)
    bf16 = forward_timing(model, x, 1, bf16=True)
    return {"tile": bf16_tile, "fp32": fp32, "bf16": bf16, "native": native_bf16("cpu")}


def batch_sizes(sizes: tuple[int, ...] = (1, 2, 4, 8), runs: int = 2) -> dict[int, Timing]:
    """Seconds per 512x512 tile at each batch size, in the runtime ``ob-infer`` picks."""
    from open_buildings.pipelines.runtime import prepare_model

    model, _ = prepare_model(load_default(), "cpu")
    calls = {n: forward_call(model, torch.rand(n, 3, TILE, TILE)) for n in sizes}
    times = interleaved({str(n): call for n, call in calls.items()}, runs)
    return {n: Timing(times[str(n)].wall / n, times[str(n)].cpu / n) for n in sizes}


_BATCH_CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from bench.common import peak_rss_mib
from bench.infer import worker_model
model, backend, _ = worker_model()
n, h, w = (int(v) for v in sys.argv[1:4])
x = torch.rand(n, 3, h, w)
with torch.inference_mode():
    model(x)
    c = resource.getrusage(resource.RUSAGE_SELF)
    model(x)
    d = resource.getrusage(resource.RUSAGE_SELF)
cpu = d.ru_utime + d.ru_stime - c.ru_utime - c.ru_stime
print("BENCH " + json.dumps({"cpu_per_tile": cpu / n, "rss_mib": peak_rss_mib()}))
"""


def batch_memory(
    sizes: tuple[int, ...] = (1, 2, 4), shape: tuple[int, int] = (1024, 1344)
) -> dict[int, dict[str, float]]:
    """CPU seconds per tile and peak RSS at each batch size, real tile shape, fresh processes."""
    import json
    import subprocess
    import sys

    from bench.common import ROOT

    out = {}
    for n in sizes:
        cmd = [sys.executable, "-c", _BATCH_CHILD, str(n), *map(str, shape), str(THREADS)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
        line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH "))
        out[n] = json.loads(line[len("BENCH ") :])
    return out


def _reaches(level: int) -> tuple[np.ndarray, float, float]:
    """How far each Nairobi building reaches from its centroid (W, E, S, N, metres), and the
    width and height of the level's tile core there (metres)."""
    import geopandas as gpd

    from open_buildings.geo import grid

    buildings = gpd.read_file(LABELS)
    center = buildings.union_all().centroid
    tile = grid.tile_for_point(center.x, center.y, grid.GridSpec(level=level, margin_m=0.0))
    local = buildings.to_crs(tile.crs).geometry
    c = local.centroid
    b = local.bounds
    reach = np.column_stack([c.x - b.minx, b.maxx - c.x, c.y - b.miny, b.maxy - c.y]).astype(float)
    g = tile.grid
    return reach, g.width * g.pixel_size, g.height * g.pixel_size


def margins(
    levels: tuple[int, ...] = (13, 14, 15), margins_m: tuple[float, ...] = (0, 8, 16, 32, 64)
) -> list[dict[str, Any]]:
    """Compute cost against buildings cut, for each tile level and margin.

    Returns:
        One dict per (level, margin): ``level``, ``margin``, ``px_per_km2`` (padded pixels the
        model runs per km² of core, averaged over the tiles covering 4 km² around the sample),
        ``cut`` (expected share of buildings cut) and ``core_m`` (core width, height).
    """
    import shapely
    from pyproj import Geod

    from open_buildings.geo import grid
    from open_buildings.models.padding import padded_shape
    from open_buildings.pipelines.runtime import PAD_MULTIPLE

    geod = Geod(ellps="WGS84")
    lon, lat = 36.9072, -1.3059
    box = shapely.box(lon - 0.009, lat - 0.009, lon + 0.009, lat + 0.009)
    rows = []
    for level in levels:
        reach, width, height = _reaches(level)
        tiles = list(grid.cover(box, grid.GridSpec(level=level)))
        core_km2 = sum(abs(geod.geometry_area_perimeter(t.core)[0]) for t in tiles) / 1e6
        for m in margins_m:
            spec = grid.GridSpec(level=level, margin_m=float(m))
            pixels = 0
            for t in tiles:
                g = grid.Tile(t.id, spec).grid
                h, w = padded_shape(g.height, g.width, PAD_MULTIPLE)
                pixels += h * w
            sides = np.array([width, width, height, height])
            cut = float(np.clip((reach - m) / sides, 0, None).sum(axis=1).mean())
            rows.append(
                {
                    "level": level,
                    "margin": m,
                    "px_per_km2": pixels / core_km2,
                    "cut": cut,
                    "core_m": (width, height),
                }
            )
    return rows


def margin_runs(margins_m: tuple[float, ...] = (0, 16, 32, 64)) -> dict[float, dict[str, float]]:
    """Run the inference job on the sample at each margin and score it against the labels.

    The job is ``pipelines/local.yaml`` with ``margin_m`` set; the scores are ``ob-eval``'s
    (Nairobi OSM buildings inside the sample region).

    Returns:
        For each margin, ``buildings`` written, ``ap50`` (COCO AP at IoU 0.5) and ``f1`` (the
        best SpaceNet F1 over confidence thresholds).
    """
    import tempfile

    from bench.common import ROOT
    from open_buildings.evaluation.evaluate import evaluate_files
    from open_buildings.evaluation.thresholds import best_f1
    from open_buildings.pipelines import job

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in margins_m:
            folder = Path(tmp) / f"m{m:g}"
            argv = ["--config", str(ROOT / "pipelines" / "local.yaml"), "-o", f"output={folder}"]
            job.run([*argv, "-o", f"grid.margin_m={m}", "-o", "runtime.max_batch_size=1"])
            result = evaluate_files(
                str(folder), str(LABELS), region_path=str(SAMPLE / "region.geojson")
            )
            out[m] = {
                "buildings": result.n_pred,
                "ap50": float(result.coco.ap50),
                "f1": float(best_f1(result.curve)["f1"]),
            }
    return out


def main(argv: list[str] | None = None) -> None:
    """Print every before/after ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bf16-tile", type=int, default=128)
    parser.add_argument(
        "--size", type=int, nargs=2, default=(TILE, TILE), help="tile height and width"
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--margin-runs", action="store_true", help="score the job per margin")
    parser.add_argument(
        "--batch-memory", action="store_true", help="peak RSS per batch size at the tile size"
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(THREADS)
    print(f"machine: {machine()}; {THREADS} threads")
    h, w = args.size
    print(f"\nmodel runtime, default model, fp32, 1x3x{h}x{w} (best of {args.runs}, interleaved):")
    times = runtimes(args.runs, (h, w), args.compile)
    base = next(iter(times.values()))
    for name, t in times.items():
        print(
            f"  {name}: {t.wall:.3f} s wall, {t.cpu:.3f} s cpu; speed-up {base.wall / t.wall:.2f}x "
            f"wall, {base.cpu / t.cpu:.2f}x cpu"
        )
    b = bf16_against_fp32(args.bf16_tile)
    print(
        f"\nbf16 autocast vs fp32 (torch, {b['tile']}x{b['tile']}, native bf16: {b['native']}): "
        f"fp32 {b['fp32'].wall:.3f} s, bf16 {b['bf16'].wall:.3f} s = "
        f"{b['bf16'].wall / b['fp32'].wall:.0f}x slower (cpu {b['bf16'].cpu / b['fp32'].cpu:.0f}x)"
    )
    print(f"\nbatch size (seconds per {TILE}x{TILE} tile):")
    batches = batch_sizes()
    for n, t in batches.items():
        print(
            f"  batch {n}: {t.wall:.3f} s wall, {t.cpu:.3f} s cpu per tile "
            f"({batches[1].cpu / t.cpu:.2f}x batch 1, cpu)"
        )
    if args.batch_memory:
        print(f"\nbatch size at {h}x{w} (fresh process each, the runtime ob-infer picks):")
        for n, r in batch_memory(shape=(h, w)).items():
            print(
                f"  batch {n}: {r['cpu_per_tile']:.2f} s cpu per tile, peak RSS "
                f"{r['rss_mib']:,.0f} MiB"
            )
    print("\nmargin and tile level: compute per km2 of core against buildings cut (Nairobi OSM)")
    rows = margins()
    ref = next(r for r in rows if r["level"] == 14 and r["margin"] == 32)
    for r in rows:
        print(
            f"  level {r['level']} (core {r['core_m'][0]:.0f}x{r['core_m'][1]:.0f} m), margin "
            f"{r['margin']:>2.0f} m: {r['px_per_km2'] / 1e6:.2f} Mpx/km2 = "
            f"{r['px_per_km2'] / ref['px_per_km2']:.2f}x level 14 at 32 m; buildings cut "
            f"{100 * r['cut']:.2f}%"
        )
    if args.margin_runs:
        print("\nthe inference job on the sample at each margin, scored against the labels:")
        for m, r in margin_runs().items():
            print(
                f"  margin {m:.0f} m: {r['buildings']} buildings, AP50 {r['ap50']:.3f}, "
                f"best F1 {r['f1']:.3f}"
            )


if __name__ == "__main__":
    main()
