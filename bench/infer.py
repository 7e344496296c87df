"""ob-infer end to end: overhead, memory and throughput: ``python -m bench.infer [--quick]``.

1. **Pipeline overhead on the sample.** ``ob-infer`` on the embedded sample in its own process,
   against the model-only forward time of the same tiles in this process (the model loaded the
   way ``ob-infer``'s workers load it, so the same runtime). The child reports the seconds its
   imports took (torch, Beam, geopandas: paid once per process) separately from the run.
2. **Dense regions: memory, overhead and throughput.** The sample is 2 partly covered tiles, so
   the steady state is measured on square regions of 1, 4 and 16 km² over imagery that repeats
   the sample's real pixels (``bench.imagery``): every tile is full of buildings. Each run is a
   fresh process; its peak RSS, wall and CPU seconds are recorded. The model-only time of a
   region is the forward time of each of its tiles' padded shapes, measured here, summed over
   its tiles. The marginal overhead (16 km² minus 1 km²) leaves out the fixed start-up.
   ``--quick`` runs the three regions over the sample imagery alone instead (most tiles empty:
   a check that covering and writing stream, not a measure of dense inference).

Every figure comes from this one run; ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import SAMPLE, THREADS, Timing, interleaved, machine
from bench.imagery import mirrored_imagery, sample_center, square_region

SIZES_KM2 = (1, 4, 16)

_CHILD = """
import json, resource, sys, time
from bench.common import peak_rss_mib  # the bench's own package: light, imports no torch
t0 = time.perf_counter()
import open_buildings.commands.infer  # what ob-infer imports before it can start
from open_buildings.commands.infer import main as infer_main
t1 = time.perf_counter()
u = resource.getrusage(resource.RUSAGE_SELF)
code = infer_main(sys.argv[1:])
v = resource.getrusage(resource.RUSAGE_SELF)
print("BENCH " + json.dumps({
    "import_wall": t1 - t0, "import_cpu": u.ru_utime + u.ru_stime,
    "run_wall": time.perf_counter() - t1,
    "run_cpu": v.ru_utime + v.ru_stime - u.ru_utime - u.ru_stime,
    "rss_mib": peak_rss_mib(), "code": code,
}))
sys.exit(code)
"""


@dataclass(frozen=True)
class InferRun:
    """One ``ob-infer`` process.

    Attributes:
        wall: the process's wall seconds (start to exit).
        cpu: its CPU seconds (user + system, all threads).
        import_wall: of ``wall``, the imports before ob-infer starts.
        import_cpu: of ``cpu``, the same.
        rss_mib: its peak resident memory.
        tiles: tiles in the region.
        buildings: footprints written.
    """

    wall: float
    cpu: float
    import_wall: float
    import_cpu: float
    rss_mib: float
    tiles: int
    buildings: int


def run_ob_infer(region: Path, out: Path, *extra: str, imagery: Path | None = None) -> InferRun:
    """Run ``ob-infer`` with the default model in a fresh process and measure it."""
    cmd = [sys.executable, "-c", _CHILD, str(region), "--out", str(out), "--no-progress"]
    cmd += ["--imagery", str(imagery or SAMPLE / "items.json"), *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"ob-infer failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH "))
    child = json.loads(line[len("BENCH ") :])
    manifest = json.loads((out / "manifest.json").read_text())
    buildings = sum(f["rows"] for f in manifest["files"] if f["format"] == "csv.gz")
    tiles = int(re.search(r"([\d,]+) tiles, model", done.stderr)[1].replace(",", ""))
    return InferRun(
        wall,
        child["import_cpu"] + child["run_cpu"],
        child["import_wall"],
        child["import_cpu"],
        child["rss_mib"],
        tiles,
        buildings,
    )


def worker_model(backend: str = "auto") -> tuple[Any, str, float]:
    """Load the default model as an ``ob-infer`` worker does; return it, its runtime, seconds."""
    from open_buildings.pipelines.config import RuntimeConfig
    from open_buildings.pipelines.model_handler import CheckpointModelHandler
    from open_buildings.pipelines.runtime import resolve_model

    handler = CheckpointModelHandler(resolve_model("default"), RuntimeConfig(backend=backend))
    start = time.perf_counter()
    model = handler.load_model()
    return model, str(handler.backend_used), time.perf_counter() - start


def region_tiles(region: Path, imagery: str) -> list[tuple[Any, Any]]:
    """The region's tiles that have imagery, with their pixels (read as ob-infer reads them)."""
    from open_buildings.geo import grid, regions
    from open_buildings.geo import imagery as imagery_mod

    source = imagery_mod.open_imagery(imagery)
    out = []
    for tile in grid.cover(regions.read_region(region).geometry):
        image = source.read(tile.grid)
        if not image.empty:
            out.append((tile, image))
    return out


def model_only(model: Any, images: list[np.ndarray], runs: int = 2) -> Timing:
    """Forward time of ``model`` over uint8 ``images`` one by one, as ``ob-infer`` runs them."""
    from open_buildings.pipelines.runtime import run_model

    def call() -> None:
        for image in images:
            run_model(model, [image])

    return interleaved({"model": call}, runs, warmup=0)["model"]


def shape_costs(model: Any, tiles: list[Any], runs: int = 2) -> dict[tuple[int, int], Timing]:
    """Forward time per padded tile shape among ``tiles`` (one real tile of each shape)."""
    from open_buildings.models.padding import padded_shape
    from open_buildings.pipelines.runtime import PAD_MULTIPLE

    by_shape: dict[tuple[int, int], Any] = {}
    for tile in tiles:
        g = tile.grid
        by_shape.setdefault(padded_shape(g.height, g.width, PAD_MULTIPLE), tile)
    rng = np.random.default_rng(0)
    return {
        shape: model_only(
            model, [rng.integers(0, 256, (3, t.grid.height, t.grid.width), dtype=np.uint8)], runs
        )
        for shape, t in by_shape.items()
    }


def stage_breakdown(
    model: Any, tiles: list[Any], imagery: str, work_dir: Path, runs: int = 1
) -> dict[str, Timing]:
    """Seconds per tile of each stage ``ob-infer`` runs, called directly (no Beam), best of runs.

    Args:
        model: the model as a worker loads it.
        tiles: the tiles (all with imagery).
        imagery: the imagery source.
        work_dir: where the per-tile results go (as ob-infer's progress files do).
        runs: timed rounds.

    Returns:
        ``read``, ``model``, ``decode``, ``polygonize`` (ownership and shard keys included) and
        ``write`` (the per-tile progress file): the best wall and CPU seconds over ``tiles``,
        divided by their number.
    """
    from open_buildings.geo import imagery as imagery_mod
    from open_buildings.models import heads
    from open_buildings.pipelines import postprocess, runtime, sinks

    source = imagery_mod.open_imagery(imagery)
    state: dict[str, Any] = {}

    def read() -> None:
        state["images"] = [source.read(t.grid) for t in tiles]

    def forward() -> None:
        state["logits"] = [runtime.run_model(model, [im.rgb])[0] for im in state["images"]]

    def decode() -> None:
        state["decoded"] = [heads.decode(x, from_logits=True) for x in state["logits"]]

    def polygonize() -> None:
        state["frames"] = [
            postprocess.owned_footprints(t, labels, conf, im.valid)
            for t, (labels, conf), im in zip(tiles, state["decoded"], state["images"], strict=True)
        ]

    def write() -> None:
        for t, frame in zip(tiles, state["frames"], strict=True):
            sinks.write_partial(frame, sinks.partial_path(work_dir, t.id))

    fns = {"read": read, "model": forward, "decode": decode, "polygonize": polygonize}
    fns["write"] = write
    best = interleaved(fns, runs, warmup=0)
    n = max(1, len(tiles))
    return {k: Timing(v.wall / n, v.cpu / n) for k, v in best.items()}


def sample_overhead(runs: int = 2, compare_torch: bool = True) -> dict[str, Any]:
    """ob-infer on the sample against model-only forward time, with its start-up split out."""
    from pyproj import Geod

    region = SAMPLE / "region.geojson"
    model, backend, load_s = worker_model()  # also warms the ONNX cache the child will use
    tiles = region_tiles(region, str(SAMPLE / "items.json"))
    forward = model_only(model, [image.rgb for _, image in tiles], runs)
    geod = Geod(ellps="WGS84")
    core_km2 = sum(abs(geod.geometry_area_perimeter(t.core)[0]) for t, _ in tiles) / 1e6
    out: dict[str, Any] = {
        "backend": backend,
        "load_s": load_s,
        "tiles": len(tiles),
        "core_km2": core_km2,
        "forward": forward,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out["run"] = run_ob_infer(region, Path(tmp) / "auto")
        if compare_torch:
            torch_model, torch_backend, _ = worker_model("torch")
            out["torch_forward"] = model_only(torch_model, [image.rgb for _, image in tiles], 1)
            out["torch_backend"] = torch_backend
            out["torch_run"] = run_ob_infer(region, Path(tmp) / "torch", "--backend", "torch")
    return out


def dense_regions(
    sizes: tuple[int, ...] = SIZES_KM2, runs: int = 2, quick: bool = False
) -> dict[str, Any]:
    """ob-infer on square regions over mirrored (or, ``quick``, the sample's own) imagery."""
    from pyproj import Geod

    from open_buildings.geo import grid, regions

    model, _, _ = worker_model()
    lon, lat = sample_center()
    geod = Geod(ellps="WGS84")
    out: dict[str, Any] = {"quick": quick, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if quick:
            imagery = SAMPLE / "items.json"
        else:
            side = (max(sizes) ** 0.5) + 1.6  # tiles reach ~0.7 km past the region's edge
            start = time.perf_counter()
            imagery = mirrored_imagery(folder / "mirrored.tif", side)
            out["imagery_s"] = time.perf_counter() - start
            out["imagery_side_km"] = side
        all_tiles = []
        for km2 in sizes:
            region = square_region(lon, lat, km2, folder / f"r{km2}.geojson")
            tiles = list(grid.cover(regions.read_region(region).geometry))
            all_tiles.extend(tiles)
            run = run_ob_infer(region, folder / f"out{km2}", imagery=imagery)
            core = sum(abs(geod.geometry_area_perimeter(t.core)[0]) for t in tiles) / 1e6
            out["sizes"][km2] = {"run": run, "tiles": tiles, "core_km2": core}
        if not quick:
            from open_buildings.models.padding import padded_shape
            from open_buildings.pipelines.runtime import PAD_MULTIPLE

            few = out["sizes"][min(sizes)]["tiles"][:4]
            out["stages"] = stage_breakdown(model, few, str(imagery), folder / "work")
            out["stage_tiles"] = len(few)

            costs = shape_costs(model, all_tiles, runs)
            for entry in out["sizes"].values():
                shapes = Counter(
                    padded_shape(t.grid.height, t.grid.width, PAD_MULTIPLE) for t in entry["tiles"]
                )
                entry["forward"] = Timing(
                    sum(costs[s].wall * n for s, n in shapes.items()),
                    sum(costs[s].cpu * n for s, n in shapes.items()),
                )
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the overhead, memory and throughput figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sparse imagery for the regions")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    print(f"machine: {machine()}")
    s = sample_overhead(args.runs)
    r, f = s["run"], s["forward"]
    print(
        f"sample: {s['tiles']} tiles, {s['core_km2']:.3f} km2 of cores, model on {s['backend']} "
        f"(worker load {s['load_s']:.2f} s)"
    )
    print(
        f"  ob-infer {r.wall:.1f} s wall, {r.cpu:.1f} s cpu (imports {r.import_wall:.1f} s wall, "
        f"{r.import_cpu:.1f} s cpu); model only {f.wall:.1f} s wall, {f.cpu:.1f} s cpu: "
        f"{r.wall / f.wall:.2f}x wall, {r.cpu / f.cpu:.2f}x cpu; without the imports "
        f"{(r.wall - r.import_wall) / f.wall:.2f}x wall"
    )
    if "torch_run" in s:
        t = s["torch_run"]
        print(
            f"  --backend torch ({s['torch_backend']}): ob-infer {t.wall:.1f} s wall, "
            f"{t.cpu:.1f} s cpu, model only {s['torch_forward'].wall:.1f} s; auto is "
            f"{t.wall / r.wall:.2f}x faster end to end"
        )
    d = dense_regions(quick=args.quick, runs=args.runs)
    for km2, e in d["sizes"].items():
        run = e["run"]
        line = (
            f"{km2} km2: {run.tiles} tiles, {run.buildings} buildings, {run.wall:.1f} s wall, "
            f"{run.cpu:.1f} s cpu, peak RSS {run.rss_mib:.0f} MiB"
        )
        if "forward" in e:
            line += f"; model only {e['forward'].wall:.1f} s = {run.wall / e['forward'].wall:.2f}x"
        print(line)
    if "stages" in d:
        print(f"stages per dense tile (mean of {d['stage_tiles']} tiles, called without Beam):")
        for name, t in d["stages"].items():
            print(f"  {name}: {t.wall:.3f} s wall, {t.cpu:.3f} s cpu")


if __name__ == "__main__":
    main()
