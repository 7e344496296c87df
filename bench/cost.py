"""The continent cost model: Africa in GPU-hours, dollars and CPU-core-hours.

``python -m bench.cost`` prints it from this run's measurements of the FLOPs per pixel; ``make
bench`` (``python -m bench``) also feeds it the measured CPU seconds per km² of ``ob-infer``.

How it works (the assumptions are the constants below, written down in ``bench/README.md``):

1. **Tiles.** Africa (Natural Earth 1:110m outlines, from pyogrio's fixtures) is covered by S2
   level-14 tiles; :func:`africa_tiles` counts them (``open_buildings.geo.grid.count_tiles``) and
   estimates their mean core area from 4,000 area-uniform random points in Africa (the harmonic
   mean of the level-14 cell areas there, so each cell counts once). ``AFRICA_KM2`` is the issue's
   30.4 M km²; the tile count times the mean core area is printed beside it as a check.
2. **FLOPs per tile.** A tile is its core (a square of the mean area, in 50 cm pixels) plus the
   margin on each side, padded to ``ob-infer``'s multiple of 64 pixels; the default model costs
   the measured FLOPs per pixel (``torch.utils.flop_counter`` on a 512x512 tile: a U-Net's FLOPs
   are linear in its pixels).
3. **GPU-hours** = tiles x FLOPs per tile / (the GPU's dense bf16 peak x ``SUSTAINED``) / 3600,
   and **dollars** at the stated on-demand price per GPU-hour. ``SUSTAINED`` is an assumption: a
   small EfficientNet-Lite0 U-Net (depthwise convolutions, narrow decoder) keeps a GPU's tensor
   cores far from busy; 10% is stated, the result scales with its inverse.
4. **CPU-core-hours** from the measured figures: the CPU seconds ``ob-infer`` spent per km² of
   tile cores on dense imagery (model, reading, decoding, polygonizing, writing: everything), and
   the model's share of it. The part that is not the model stays on the CPUs of a GPU worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

AFRICA_KM2 = 30.4e6
TILE_LEVEL = 14
PIXEL_M = 0.5
PAD = 64
#: Assumed share of the GPU's dense bf16 peak the default model sustains (not measured here).
SUSTAINED = 0.10


@dataclass(frozen=True)
class Gpu:
    """A GPU's datasheet peak and an on-demand price.

    Attributes:
        name: the GPU.
        peak_tflops: dense (no sparsity) bf16 tensor TFLOP/s from NVIDIA's datasheet (the T4 has
            no bf16: its fp16 figure).
        usd_per_hour: the stated on-demand price of one GPU for an hour.
        source: where the figures come from.
        memory_gbps: the datasheet's memory bandwidth, GB/s.
    """

    name: str
    peak_tflops: float
    usd_per_hour: float
    source: str
    memory_gbps: float = 0.0


#: Datasheet peaks: NVIDIA H100 (SXM, "BF16 Tensor Core 1,979 TFLOPS" with sparsity -> 989
#: dense), A100 (SXM 80GB, 624 with sparsity -> 312), L4 (242 with sparsity -> 121), T4 (FP16
#: mixed precision 65). Prices: Google Cloud on-demand GPU list prices, us-central1, per GPU-hour
#: (cloud.google.com/compute/gpus-pricing; H100 as a3-highgpu-8g / 8, VM included); they change,
#: so edit them here. Memory bandwidth from the same datasheets: H100 SXM 3.35 TB/s (HBM3),
#: A100 80GB SXM 2,039 GB/s, L4 300 GB/s, T4 320 GB/s.
GPUS = (
    Gpu("H100 SXM", 989.0, 11.06, "NVIDIA H100 datasheet; GCP a3-highgpu-8g / 8", 3350.0),
    Gpu("A100 80GB", 312.0, 3.93, "NVIDIA A100 datasheet; GCP A100 80GB GPU price", 2039.0),
    Gpu("L4", 121.0, 0.56, "NVIDIA L4 datasheet; GCP L4 GPU price", 300.0),
    Gpu("T4 (fp16)", 65.0, 0.35, "NVIDIA T4 datasheet; GCP T4 GPU price", 320.0),
)

_NATURAL_EARTH = "tests/fixtures/naturalearth_lowres/naturalearth_lowres.shp"


def africa() -> Any:
    """Africa's outline (Natural Earth 1:110m, shipped with pyogrio's tests; public domain)."""
    import geopandas as gpd
    import pyogrio

    world = gpd.read_file(Path(pyogrio.__file__).parent / _NATURAL_EARTH)
    return world[world["continent"] == "Africa"].union_all()


def africa_tiles(samples: int = 4000, seed: int = 0) -> dict[str, float]:
    """Count Africa's level-14 tiles and estimate their mean core area.

    Returns:
        ``tiles``, ``mean_core_km2``, ``covered_km2`` (their product) and ``mean_tile_px``: the
        padded pixels ``ob-infer`` runs per tile (its real UTM grid, margin and padding to 64),
        averaged over the tiles (each counted once) of the first 1,000 sample points.
    """
    import s2geometry as s2
    import shapely

    from open_buildings.geo import grid
    from open_buildings.models.padding import padded_shape

    outline = africa()
    tiles = grid.count_tiles(outline, grid.GridSpec(level=TILE_LEVEL))
    rng = np.random.default_rng(seed)
    w, s, e, n = outline.bounds
    low, high = np.sin(np.radians(s)), np.sin(np.radians(n))
    inverse: list[float] = []
    pixels: list[float] = []
    while len(inverse) < samples:  # area-uniform points: uniform in longitude and sin(latitude)
        lon = rng.uniform(w, e, 4 * samples)
        lat = np.degrees(np.arcsin(rng.uniform(low, high, 4 * samples)))
        inside = shapely.contains_xy(outline, lon, lat)
        for x, y in zip(lon[inside], lat[inside]):
            point = s2.S2LatLng.FromDegrees(float(y), float(x))
            cell = s2.S2Cell(s2.S2CellId(point).parent(TILE_LEVEL))
            inverse.append(1.0 / (cell.ExactArea() * 6371.0088**2))
            if len(pixels) < min(samples, 1000):
                g = grid.tile_for_point(float(x), float(y)).grid
                height, width = padded_shape(g.height, g.width, PAD)
                pixels.append(height * width)
    mean_core = 1.0 / float(np.mean(inverse[:samples]))
    weights = np.asarray(inverse[: len(pixels)])  # each tile once: weight 1 / its area
    mean_px = float(np.sum(np.asarray(pixels) * weights) / np.sum(weights))
    return {
        "tiles": tiles,
        "mean_core_km2": mean_core,
        "covered_km2": tiles * mean_core,
        "mean_tile_px": mean_px,
    }


def tile_pixels(core_km2: float, margin_m: float = 32.0) -> int:
    """Padded pixels of a tile whose core is a square of ``core_km2``, with ``margin_m``."""
    side = math.sqrt(core_km2 * 1e6) / PIXEL_M + 2 * margin_m / PIXEL_M
    padded = math.ceil(side / PAD) * PAD
    return padded * padded


def cost_model(
    flops_per_px: float,
    tiles: float,
    mean_core_km2: float,
    cpu_s_per_km2: float | None = None,
    model_cpu_s_per_km2: float | None = None,
    sustained: float = SUSTAINED,
    tile_px: float | None = None,
    bytes_per_px: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Project Africa's inference cost.

    Args:
        flops_per_px: the default model's FLOPs per input pixel.
        tiles: level-14 tiles covering Africa.
        mean_core_km2: their mean core area.
        cpu_s_per_km2: measured ``ob-infer`` CPU seconds per km² of tile cores (everything).
        model_cpu_s_per_km2: of which the model's forward.
        sustained: assumed share of a GPU's dense peak.
        tile_px: the measured mean padded pixels of a tile (``africa_tiles``); None takes a
            square core plus margins (``tile_pixels``), which underestimates it.
        bytes_per_px: activation bytes moved per input pixel, ``fused`` and ``unfused``
            (``bench.models.activation_bytes``); each GPU then also gets the roofline: the time
            its datasheet peak and memory bandwidth allow at best, and which of them binds.

    Returns:
        ``flops_per_tile``, ``flops_per_km2``, ``total_flops``, ``gpus`` (name, GPU-hours,
        dollars per GPU) and, when the CPU figures are given, ``cpu_core_hours`` and
        ``model_cpu_core_hours``.
    """
    pixels = tile_px if tile_px is not None else tile_pixels(mean_core_km2)
    per_tile = flops_per_px * pixels
    total = per_tile * tiles
    out: dict[str, Any] = {
        "tile_pixels": pixels,
        "flops_per_tile": per_tile,
        "flops_per_km2": per_tile / mean_core_km2,
        "total_flops": total,
        "sustained": sustained,
        "gpus": [],
    }
    for gpu in GPUS:
        rate = gpu.peak_tflops * 1e12 * sustained
        hours = total / rate / 3600
        usd = hours * gpu.usd_per_hour
        tile_ms = per_tile / rate * 1e3
        row = {"gpu": gpu, "hours": hours, "usd": usd, "tile_ms": tile_ms}
        if bytes_per_px and gpu.memory_gbps:
            compute_ms = per_tile / (gpu.peak_tflops * 1e12) * 1e3
            for kind, per_px in bytes_per_px.items():
                memory_ms = per_px * pixels / (gpu.memory_gbps * 1e9) * 1e3
                row[f"roofline_ms_{kind}"] = max(compute_ms, memory_ms)
                row[f"memory_bound_{kind}"] = memory_ms > compute_ms
        out["gpus"].append(row)
    if bytes_per_px:
        out["bytes_per_tile"] = {k: v * pixels for k, v in bytes_per_px.items()}
        out["flop_per_byte"] = {k: per_tile / (v * pixels) for k, v in bytes_per_px.items()}
    if cpu_s_per_km2 is not None:
        out["cpu_core_hours"] = AFRICA_KM2 * cpu_s_per_km2 / 3600
    if model_cpu_s_per_km2 is not None:
        out["model_cpu_core_hours"] = AFRICA_KM2 * model_cpu_s_per_km2 / 3600
    return out


def format_cost(c: dict[str, Any]) -> list[str]:
    """The cost model as lines of text."""
    lines = [
        f"Africa {AFRICA_KM2 / 1e6:.1f} M km2; a tile is {c['tile_pixels'] / 1e6:.2f} Mpx padded "
        f"= {c['flops_per_tile'] / 1e9:.0f} GFLOP; {c['flops_per_km2'] / 1e9:.0f} GFLOP/km2; "
        f"{c['total_flops']:.2e} FLOP in all; GPUs at {100 * c['sustained']:.0f}% of peak:"
    ]
    for g in c["gpus"]:
        gpu = g["gpu"]
        lines.append(
            f"  {gpu.name} ({gpu.peak_tflops:.0f} TFLOP/s, ${gpu.usd_per_hour:.2f}/h): "
            f"{g['hours']:,.0f} GPU-h, ${g['usd']:,.0f} ({g['tile_ms']:.1f} ms/tile)"
        )
        if "roofline_ms_fused" in g:
            bound = "memory" if g["memory_bound_fused"] else "compute"
            lines.append(
                f"    roofline at best: {g['roofline_ms_fused']:.2f} ms/tile fused "
                f"({bound}-bound), {g['roofline_ms_unfused']:.2f} ms unfused; ridge "
                f"{gpu.peak_tflops * 1e3 / gpu.memory_gbps:.0f} FLOP/byte"
            )
    if "bytes_per_tile" in c:
        b, i = c["bytes_per_tile"], c["flop_per_byte"]
        lines.insert(
            1,
            f"  activation traffic per tile (bf16): {b['fused'] / 1e9:.1f} GB fused, "
            f"{b['unfused'] / 1e9:.1f} GB unfused; {i['fused']:.0f} / {i['unfused']:.0f} FLOP "
            "per byte",
        )
    if "cpu_core_hours" in c:
        lines.append(
            f"  this CPU, measured: {c['cpu_core_hours']:,.0f} CPU-core-hours for ob-infer, of "
            f"which the model {c.get('model_cpu_core_hours', float('nan')):,.0f}"
        )
    return lines


def main() -> None:
    """Print the cost model from this run's FLOP count (no CPU timings)."""
    import torch

    from bench.models import TILE, activation_bytes, count_flops, load_default

    model, x = load_default(), torch.rand(1, 3, TILE, TILE)
    flops = count_flops(model, x) / TILE**2
    per_px = {k: v / TILE**2 for k, v in activation_bytes(model, x).items()}
    t = africa_tiles()
    print(
        f"Africa: {t['tiles']:,} level-{TILE_LEVEL} tiles, mean core {t['mean_core_km2']:.4f} km2 "
        f"(covering {t['covered_km2'] / 1e6:.1f} M km2)"
    )
    cost = cost_model(
        flops, t["tiles"], t["mean_core_km2"], tile_px=t["mean_tile_px"], bytes_per_px=per_px
    )
    for line in format_cost(cost):
        print(line)


if __name__ == "__main__":
    main()
