"""Model speed on CPU: ``python -m bench.models``.

For every registered model: parameter count, forward FLOPs (``torch.utils.flop_counter``), the
median CPU forward time of one 1x3x512x512 tile with 2 threads in fp32 and under bf16 autocast,
their ratio, and the achieved GFLOP/s against this machine's measured fp32 matmul peak.

bf16 on a CPU without native bf16 (AVX2 only, no AVX512-BF16/AMX) sends every convolution to
ATen's reference ``_slow_conv2d_forward``: about 100x slower than fp32, so a 512x512 bf16 run takes
minutes per model. By default bf16 is therefore timed on a ``--bf16-tile`` (128) input, one run
after one warm-up, and scaled by the pixel count to 512 (the reference convolution is
compute-bound, its cost linear in pixels); ``--bf16-tile 512`` measures it directly. Then the
instance decoding of a realistic 512x512 output against the model forward time: the output is
built from the real Nairobi OSM buildings (the sample labels) rasterised on the 50 cm grid,
turned into targets, blurred and perturbed so that it looks like a network's probabilities.

Every figure comes from this one run; ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.utils.flop_counter import FlopCounterMode

from open_buildings.models import build_model, decode, list_models, make_targets

TILE = 512


def _median_seconds(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(n: int = 1024, runs: int = 5) -> float:
    """Measured fp32 GFLOP/s of an ``n x n`` matmul on the current thread count."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    seconds = _median_seconds(lambda: a @ b, runs, warmup=2)
    return 2 * n**3 / seconds / 1e9


def bench_model(name: str, runs: int, bf16_tile: int) -> dict[str, float | str | int]:
    """Time one model's forward on a 1x3x512x512 tile in fp32 and (see above) bf16 autocast."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.rand(1, 3, TILE, TILE)
    small = torch.rand(1, 3, bf16_tile, bf16_tile)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(x)
        flops = counter.get_total_flops()
        fp32 = _median_seconds(lambda: model(x), runs, warmup=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_small = _median_seconds(lambda: model(small), 1, warmup=1)
    return {
        "name": name,
        "params": model.num_parameters(),
        "gflops": flops / 1e9,
        "fp32_s": fp32,
        "bf16_s": bf16_small * (TILE / bf16_tile) ** 2,
    }


def realistic_output(seed: int = 0) -> tuple[np.ndarray, int]:
    """Logits ``(2, 512, 512)`` that look like a trained network's, and the building count.

    The buildings are the real Nairobi OSM footprints of ``tests/data/labels`` on their 50 cm
    grid (the 512x512 window holding the most of them). The targets are blurred (sigma 1.5 px),
    noised and turned into logits, so edges are soft and seeds are not perfectly clean.
    """
    from bench.polygonize import instance_raster

    labels, _ = instance_raster()
    counts = ndi.uniform_filter((labels > 0).astype(np.float32), size=TILE, mode="constant")
    r, c = np.unravel_index(int(np.argmax(counts)), counts.shape)
    r0 = int(np.clip(r - TILE // 2, 0, max(labels.shape[0] - TILE, 0)))
    c0 = int(np.clip(c - TILE // 2, 0, max(labels.shape[1] - TILE, 0)))
    window = labels[r0 : r0 + TILE, c0 : c0 + TILE]
    target = make_targets(window).target
    rng = np.random.default_rng(seed)
    probs = np.stack([ndi.gaussian_filter(ch, 1.5) for ch in target])
    probs = np.clip(probs + rng.normal(0, 0.05, probs.shape), 1e-4, 1 - 1e-4)
    return np.log(probs / (1 - probs)).astype(np.float32), len(np.unique(window)) - 1


def dense_output() -> tuple[np.ndarray, int]:
    """Logits for a dense 512x512 scene: 20x14 px houses in rows, pairs touching, 2 px lanes."""
    instances = np.zeros((TILE, TILE), np.int32)
    ident = 0
    for r in range(2, TILE - 20, 22):
        for c in range(2, TILE - 28, 30):
            for dc in (0, 14):  # two houses sharing a wall
                ident += 1
                instances[r : r + 20, c + dc : c + dc + 14] = ident
    probs = np.stack([ndi.gaussian_filter(ch, 1.0) for ch in make_targets(instances).target])
    probs = np.clip(probs, 1e-4, 1 - 1e-4)
    return np.log(probs / (1 - probs)).astype(np.float32), ident


def bench_decode(runs: int, dense: bool = False) -> dict[str, float | int]:
    """Time ``heads.decode`` (and ``make_targets``) on a realistic 512x512 output."""
    logits, buildings = dense_output() if dense else realistic_output()
    labels, _ = decode(logits)
    decode_s = _median_seconds(lambda: decode(logits), runs)
    instances = np.zeros((TILE, TILE), np.int32)
    instances[:] = labels
    targets_s = _median_seconds(lambda: make_targets(instances), runs)
    return {
        "buildings": buildings,
        "instances": int(labels.max()),
        "decode_s": decode_s,
        "targets_s": targets_s,
    }


def main(argv: list[str] | None = None) -> None:
    """Print the model table and the decode-vs-forward ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--models", nargs="*", default=None, help="subset of registry names")
    parser.add_argument(
        "--bf16-tile", type=int, default=128, help="input side for the bf16 timing (see above)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"input 1x3x{TILE}x{TILE}, fp32: median of {args.runs} after 1 warm-up (the FLOP count); "
        f"bf16: 1 run at {args.bf16_tile}x{args.bf16_tile}"
        + (
            f", scaled x{(TILE / args.bf16_tile) ** 2:.0f} to {TILE}"
            if args.bf16_tile != TILE
            else ""
        )
    )
    peak = matmul_peak_gflops()
    print(f"measured fp32 matmul peak (1024^3, 2 threads): {peak:.1f} GFLOP/s")
    print()
    print("| model | params | GFLOPs | fp32 s | bf16 s | bf16/fp32 | fp32 GFLOP/s | % of peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = [bench_model(n, args.runs, args.bf16_tile) for n in (args.models or list_models())]
    for r in rows:
        rate = r["gflops"] / r["fp32_s"]
        print(
            f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['gflops']:.1f} | {r['fp32_s']:.3f} | "
            f"{r['bf16_s']:.1f} | {r['bf16_s'] / r['fp32_s']:.0f}x | {rate:.1f} | "
            f"{100 * rate / peak:.0f}% |"
        )
    print()
    for label, dense in (("real Nairobi buildings", False), ("dense rows of houses", True)):
        d = bench_decode(args.runs, dense=dense)
        print(
            f"decode, {TILE}x{TILE} output, {label} ({d['buildings']} buildings -> "
            f"{d['instances']} instances): {1000 * d['decode_s']:.1f} ms; make_targets on the "
            f"same chip: {1000 * d['targets_s']:.1f} ms"
        )
        shares = ", ".join(f"{r['name']} {100 * d['decode_s'] / r['fp32_s']:.1f}%" for r in rows)
        print(f"  decode / fp32 forward: {shares}")
    print(
        "note: fp32 GFLOP/s can exceed the matmul peak when a concurrent process slowed the peak "
        f"measurement; peak re-measured at the end: {matmul_peak_gflops():.1f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
