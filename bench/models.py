"""Model speed on this CPU: ``python -m bench.models [--models NAME ...]``.

Two parts.

1. :func:`efficiency`, the default model (``models/default``) as ``ob-infer`` runs it: FLOPs per
   512x512 tile (``torch.utils.flop_counter``), forward time in fp32 (PyTorch contiguous, PyTorch
   ``channels_last``, ONNX Runtime) and under bf16 autocast, each as achieved GFLOP/s against this
   machine's dense matmul GFLOP/s measured in the same run (fp32 and bf16).
2. :func:`compare_models`, every registered model: parameters, FLOPs per 512x512 tile, CPU
   forward time in fp32 and bf16. Models over ``--max-params`` (e.g. ``vit_siglip_so400m_14``) are
   measured on a smaller input and scaled by the pixel count; the table says which.

bf16 on a CPU without native bf16 (AVX2 only, no AVX512-BF16/AMX) sends every convolution to
ATen's reference ``_slow_conv2d_forward``, about 100x slower than fp32, so bf16 is timed on a
``--bf16-tile`` input (128 by default, one run after one warm-up) and scaled by the pixel count
to 512 (the reference convolution is compute-bound, its cost linear in pixels).

:func:`capacity_compute` is the hook for mixture-of-experts models: FLOPs, time and the share of
expert work done at a given eval capacity (``python -m bench.models --capacity 0.5 0.75 1.0``).
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.common import DEFAULT_WEIGHTS, THREADS, Timing, interleaved, machine, timed

TILE = 512


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 1024, runs: int = 5) -> float:
    """Measured GFLOP/s of an ``n x n`` dense matmul in ``dtype`` on the current thread count."""
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    best = timed(lambda: a @ b, runs, warmup=2)
    return 2 * n**3 / best.wall / 1e9


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward (``torch.utils.flop_counter``: a multiply-add counts 2)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def activation_bytes(model: nn.Module, x: torch.Tensor, *, bytes_per_value: int = 2) -> dict:
    """Bytes of activations one forward moves through memory: each layer reads its input and
    writes its output (bf16 by default), counted two ways.

    ``fused`` counts the convolutions only (batch norm and activations folded into them, as
    TensorRT or ``torch.compile`` do; the decoder's concatenations and upsampling are views or
    folded reads); ``unfused`` counts every leaf layer, as eager PyTorch runs them. A GPU's
    real traffic lies between the two (caches catch some of it). Written here because
    ``FlopCounterMode`` counts no bytes and no profiler is needed for a static count.
    """
    totals = {"fused": 0, "unfused": 0}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        values = sum(t.numel() for t in inputs if torch.is_tensor(t)) + output.numel()
        totals["unfused"] += values * bytes_per_value
        if isinstance(module, nn.Conv2d):
            totals["fused"] += values * bytes_per_value

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return totals


def forward_call(model: nn.Module, x: torch.Tensor, *, bf16: bool = False) -> Callable[[], None]:
    """A function running ``model(x)`` in inference mode (optionally under bf16 autocast)."""

    from open_buildings.pipelines.onnx_model import OnnxModel

    if isinstance(model, OnnxModel):  # ONNX Runtime and OpenVINO take numpy
        array = x.numpy()
        return lambda: model(array)

    def call() -> None:
        with torch.inference_mode():
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    model(x)
            else:
                model(x)

    return call


def forward_timing(
    model: nn.Module, x: torch.Tensor, runs: int, *, bf16: bool = False, warmup: int = 1
) -> Timing:
    """Best wall and CPU seconds of ``model(x)`` in inference mode (optionally bf16 autocast)."""
    return timed(forward_call(model, x, bf16=bf16), runs, warmup=warmup)


def load_default() -> nn.Module:
    """The shipped default model, in eval mode (sha256 checked)."""
    from open_buildings.models.checkpoint import load_checkpoint

    return load_checkpoint(DEFAULT_WEIGHTS).eval()


def variants(model: nn.Module) -> dict[str, nn.Module]:
    """The ways ``ob-infer`` could run ``model`` on a CPU: contiguous, channels_last, ORT."""
    from open_buildings.pipelines import onnx_backend

    out = {"torch fp32 (contiguous)": model}
    out["torch fp32 channels_last"] = copy.deepcopy(model).to(memory_format=torch.channels_last)
    if onnx_backend.conversion_available():
        out["ONNX Runtime fp32"] = onnx_backend.to_onnxruntime(copy.deepcopy(model))
    return out


def efficiency(runs: int = 3, bf16_tile: int = 128) -> dict[str, Any]:
    """FLOPs, forward times and GFLOP/s against the measured matmul peaks, default model.

    Args:
        runs: timed runs per measurement (best of).
        bf16_tile: side of the input bf16 autocast is timed on (scaled to 512 by pixels).

    Returns:
        ``gflops`` per 512x512 tile, ``peak_fp32`` and ``peak_bf16`` (GFLOP/s), and ``rows``:
        one dict per way of running it with ``name``, ``wall``, ``cpu`` (seconds per tile),
        ``gflops_per_s`` and ``share_of_peak``; ``bf16_small`` and ``fp32_small``: torch bf16
        and fp32 on the same ``bf16_tile`` input (the like-for-like ratio).
    """
    from open_buildings.pipelines.runtime import native_bf16

    torch.set_num_threads(THREADS)
    model = load_default()
    x = torch.rand(1, 3, TILE, TILE)
    gflops = count_flops(model, x) / 1e9
    peak_fp32 = matmul_peak_gflops(torch.float32)
    peak_bf16 = matmul_peak_gflops(torch.bfloat16, runs=2)
    nets = variants(model)
    times = interleaved({name: forward_call(net, x) for name, net in nets.items()}, runs)
    rows = [
        {"name": name, "wall": t.wall, "cpu": t.cpu, "peak": peak_fp32} for name, t in times.items()
    ]
    small = torch.rand(1, 3, bf16_tile, bf16_tile)
    scale = (TILE / bf16_tile) ** 2
    fp32_small = forward_timing(model, small, runs)
    t = forward_timing(model, small, 1, bf16=True, warmup=0)  # a reference kernel: no warm-up
    rows.append(
        {
            "name": f"torch bf16 autocast ({bf16_tile}px x{scale:.0f})",
            "wall": t.wall * scale,
            "cpu": t.cpu * scale,
            "peak": peak_bf16,
        }
    )
    for row in rows:
        row["gflops_per_s"] = gflops / row["wall"]
        row["share_of_peak"] = row["gflops_per_s"] / row["peak"]
    return {
        "model": model.name,
        "gflops": gflops,
        "bytes_per_px": {k: v / TILE**2 for k, v in activation_bytes(model, x).items()},
        "peak_fp32": peak_fp32,
        "peak_bf16": peak_bf16,
        "native_bf16": native_bf16("cpu"),
        "rows": rows,
        "bf16_tile": bf16_tile,
        "bf16_small": t,
        "fp32_small": fp32_small,
    }


# ------------------------------------------------------------------------------- all models


@dataclass(frozen=True)
class ModelRow:
    """One line of the model comparison.

    Attributes:
        name: registry name.
        params: parameter count.
        gflops: forward GFLOPs per 512x512 tile (scaled when ``measured_at`` < 512).
        fp32: seconds per 512x512 tile in fp32 (scaled likewise).
        bf16: seconds per 512x512 tile under bf16 autocast (from ``bf16_tile``, scaled).
        measured_at: the input side actually run.
    """

    name: str
    params: int
    gflops: float
    fp32: Timing
    bf16: Timing
    measured_at: int


def bench_model(
    name: str, runs: int = 3, bf16_tile: int = 128, max_params: float = 200e6
) -> ModelRow:
    """Time one registered model (random weights) on a 512x512 tile, fp32 and bf16.

    Args:
        name: registry name.
        runs: timed fp32 runs (best of).
        bf16_tile: the input side for the bf16 timing.
        max_params: models with more parameters run at 256x256 (FLOPs and time scaled x4).
    """
    from open_buildings.models import build_model

    torch.manual_seed(0)
    model = build_model(name).eval()
    params = model.num_parameters()
    size = TILE if params <= max_params else TILE // 2
    scale = (TILE / size) ** 2
    x = torch.rand(1, model.input_spec.bands, size, size)
    flops = count_flops(model, x) * scale
    fp32 = forward_timing(model, x, runs)
    small = torch.rand(1, model.input_spec.bands, min(bf16_tile, size), min(bf16_tile, size))
    bf16_scale = (TILE / small.shape[-1]) ** 2
    bf16 = forward_timing(model, small, 1, bf16=True)
    return ModelRow(
        name,
        params,
        flops / 1e9,
        Timing(fp32.wall * scale, fp32.cpu * scale),
        Timing(bf16.wall * bf16_scale, bf16.cpu * bf16_scale),
        size,
    )


def compare_models(
    names: list[str] | None = None, runs: int = 3, bf16_tile: int = 128, max_params: float = 200e6
) -> list[ModelRow]:
    """Run :func:`bench_model` for ``names`` (every registered model by default)."""
    from open_buildings.models import list_models

    torch.set_num_threads(THREADS)
    return [bench_model(n, runs, bf16_tile, max_params) for n in (names or list_models())]


def format_comparison(rows: list[ModelRow], peak: float) -> str:
    """The comparison as a markdown table, GFLOP/s against the fp32 matmul ``peak``."""
    lines = [
        "| model | params | GFLOPs/tile | fp32 s/tile (wall, cpu) | bf16 s/tile (wall) | "
        "bf16/fp32 | fp32 GFLOP/s | of fp32 peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rate = r.gflops / r.fp32.wall
        note = f" (run at {r.measured_at}px, scaled)" if r.measured_at != TILE else ""
        lines.append(
            f"| {r.name}{note} | {r.params / 1e6:.1f}M | {r.gflops:.1f} | "
            f"{r.fp32.wall:.3f}, {r.fp32.cpu:.3f} | {r.bf16.wall:.1f} | "
            f"{r.bf16.wall / r.fp32.wall:.0f}x | {rate:.1f} | {100 * rate / peak:.0f}% |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------- mixture of experts


def capacity_compute(
    model: nn.Module, capacity: float, images: torch.Tensor | None = None, runs: int = 1
) -> dict[str, float]:
    """Compute of a mixture-of-experts model at one eval capacity factor (the V-MoE hook).

    The model's own capacities are restored afterwards.

    Args:
        model: a model with MoE layers (``models.moe.moe_layers`` finds them), e.g. ``vmoe_s16``.
        capacity: the eval capacity factor to measure at (e.g. 0.5, 0.75, 1.0).
        images: the input batch; None uses one random 3x224x224 image.
        runs: timed runs (best of).

    Returns:
        ``capacity``; ``gflops`` (total forward FLOPs counted by ``torch.utils.flop_counter``);
        ``expert_fraction`` (expert FLOPs run / FLOPs to serve every routing choice, from
        ``models.moe.measure_expert_compute``); ``served_fraction`` (routing choices that found
        room); ``wall`` and ``cpu`` seconds per forward.

    Raises:
        ConfigError: if the model has no MoE layers.
    """
    from open_buildings.models.moe_compute import capacity_applied, measure_expert_compute

    x = images if images is not None else torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        expert = measure_expert_compute(model, x, capacity)
    with capacity_applied(model, capacity):
        flops = count_flops(model, x)
        t = forward_timing(model, x, runs)
    return {
        "capacity": capacity,
        "gflops": flops / 1e9,
        "expert_fraction": float(expert.flops_fraction),
        "served_fraction": float(expert.served_fraction),
        "wall": t.wall,
        "cpu": t.cpu,
    }


def main(argv: list[str] | None = None) -> None:
    """Print the default model's efficiency and the comparison of every registered model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--models", nargs="*", default=None, help="subset of registry names")
    parser.add_argument("--bf16-tile", type=int, default=128, help="input side for bf16 timing")
    parser.add_argument(
        "--max-params", type=float, default=200e6, help="larger models run at 256px and scale"
    )
    parser.add_argument(
        "--capacity",
        type=float,
        nargs="*",
        default=None,
        help="also measure every MoE model at these eval capacities",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(THREADS)
    print(f"machine: {machine()}; {THREADS} threads")
    eff = efficiency(args.runs, args.bf16_tile)
    print(
        f"default model ({eff['model']}): {eff['gflops']:.2f} GFLOPs per 512x512 tile; "
        f"matmul peak fp32 {eff['peak_fp32']:.1f} GFLOP/s, bf16 {eff['peak_bf16']:.1f} GFLOP/s "
        f"(native bf16: {eff['native_bf16']})"
    )
    for r in eff["rows"]:
        print(
            f"  {r['name']}: {r['wall']:.3f} s wall, {r['cpu']:.3f} s cpu = "
            f"{r['gflops_per_s']:.1f} GFLOP/s, {100 * r['share_of_peak']:.0f}% of the peak"
        )
    rows = compare_models(args.models, args.runs, args.bf16_tile, args.max_params)
    print()
    print(format_comparison(rows, matmul_peak_gflops()))
    if args.capacity:
        from open_buildings.models import build_model
        from open_buildings.models.moe import moe_layers

        for row in rows:
            model = build_model(row.name).eval()
            if not moe_layers(model):
                continue
            for c in args.capacity:
                m = capacity_compute(model, c)
                print(
                    f"{row.name} capacity {c}: {m['gflops']:.2f} GFLOPs, expert work "
                    f"{100 * m['expert_fraction']:.0f}%, {m['wall']:.3f} s"
                )


if __name__ == "__main__":
    main()
