"""All five measurements in one table: ``python -m bench [--quick]`` (``make bench``).

1. model efficiency (``bench.models``), 2. pipeline overhead and 4. memory and 5. throughput
(``bench.infer``), 3. post-processing (``bench.polygonize``), the Africa cost model
(``bench.cost``) and the speed changes (``bench.speedups``); then, in a full run, ob-infer
against the script a user would write with CPU utilisation (``bench.baseline``), the runtime
table (``bench.runtimes``) and decode and polygonize against the code before issue #16's
speed-ups (``bench.postprocess_rev``). Every figure comes from this one run; ratios are taken
between figures measured in it. ``--quick`` (about 5 minutes) leaves out
the dense 1/4/16 km² runs (memory is then measured over the sample's sparse imagery), the
end-to-end ``--backend torch`` run, the batch-size sweep and the three added sections; the full
run took 6 minutes on 2 cores with AVX512-BF16 (11-13 on an AVX2-only machine before #16).
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import torch

from bench import baseline, cost, infer, models, polygonize, postprocess_rev, runtimes, speedups
from bench.common import THREADS, load_average, machine

#: The code before issue #16's decode and polygonize speed-ups, which the full run compares with.
BEFORE_SPEEDUPS = "d30f471^"


def _row(number: str, what: str, value: str, ratio: str, target: str = "") -> str:
    return f"| {number} | {what} | {value} | {ratio} | {target} |"


def main(argv: list[str] | None = None) -> None:
    """Run every benchmark and print the table, then the speed changes and the cost model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="leave out the dense-region runs")
    parser.add_argument("--runs", type=int, default=3, help="timed repeats per measurement")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    print(f"machine: {machine()}; {THREADS} threads; {'quick' if args.quick else 'full'} run")
    print(
        "times are the best of the repeats; 'cpu' is CPU seconds (user + system, all threads), "
        "which other processes on a shared machine barely move"
    )

    eff = models.efficiency(args.runs)
    sample = infer.sample_overhead(runs=2, compare_torch=not args.quick)
    post = polygonize.run(args.runs)
    dense = infer.dense_regions(quick=args.quick, runs=2)
    tiles = cost.africa_tiles()
    batches = {} if args.quick else speedups.batch_sizes(runs=2)
    margins = speedups.margins()

    rows = [
        "| # | measurement | value | ratio | target |",
        "|---|---|---|---|---|",
    ]
    by_name = {r["name"]: r for r in eff["rows"]}
    rows.append(
        _row(
            "1",
            f"model efficiency: {eff['model']}, FLOPs per 512x512 tile (flop_counter)",
            f"{eff['gflops']:.2f} GFLOP",
            "-",
        )
    )
    rows.append(
        _row(
            "1",
            "dense matmul peak, 1024^3, fp32 / bf16",
            f"{eff['peak_fp32']:.1f} / {eff['peak_bf16']:.1f} GFLOP/s",
            f"bf16 {eff['peak_bf16'] / eff['peak_fp32']:.2f}x fp32 (native bf16: "
            f"{eff['native_bf16']})",
        )
    )
    for r in eff["rows"]:
        rows.append(
            _row(
                "1",
                f"forward, {r['name']}",
                f"{r['wall']:.3f} s ({r['cpu']:.3f} s cpu) = {r['gflops_per_s']:.1f} GFLOP/s",
                f"{100 * r['share_of_peak']:.0f}% of the "
                f"{'bf16' if 'bf16' in r['name'] else 'fp32'} matmul peak",
            )
        )
    b16, f32, side = eff["bf16_small"], eff["fp32_small"], eff["bf16_tile"]
    rows.append(
        _row(
            "1",
            f"bf16 autocast against fp32 (torch, same {side}x{side} input)",
            f"{b16.wall:.2f} s vs {f32.wall:.3f} s ({b16.cpu:.2f} vs {f32.cpu:.3f} s cpu)",
            f"{f32.cpu / b16.cpu:.3f}x speed (bf16 {b16.cpu / f32.cpu:.0f}x slower)",
            ">= 1.5x: " + ("met" if f32.cpu / b16.cpu >= 1.5 else "not met"),
        )
    )
    run, fwd = sample["run"], sample["forward"]
    rows.append(
        _row(
            "2",
            f"pipeline overhead: ob-infer on the sample ({sample['tiles']} tiles, "
            f"{sample['backend']}) / model-only forward",
            f"{run.wall:.1f} s ({run.cpu:.1f} s cpu) / {fwd.wall:.1f} s ({fwd.cpu:.1f} s cpu)",
            f"{run.wall / fwd.wall:.2f}x wall, {run.cpu / fwd.cpu:.2f}x cpu",
            "<= 1.25x: " + ("met" if run.wall / fwd.wall <= 1.25 else "not met"),
        )
    )
    rows.append(
        _row(
            "2",
            "  of which imports before ob-infer starts (torch, Beam; once per process)",
            f"{run.import_wall:.1f} s ({run.import_cpu:.1f} s cpu)",
            f"{(run.wall - run.import_wall) / fwd.wall:.2f}x wall without them",
        )
    )
    sizes: dict[int, Any] = dense["sizes"]
    if not dense["quick"]:
        small, big = sizes[min(sizes)], sizes[max(sizes)]
        for km2, e in sizes.items():
            rows.append(
                _row(
                    "2",
                    f"dense {km2} km2 ({e['run'].tiles} tiles, {e['run'].buildings:,} buildings)"
                    " / model-only",
                    f"{e['run'].wall:.1f} s / {e['forward'].wall:.1f} s",
                    f"{e['run'].wall / e['forward'].wall:.2f}x wall, "
                    f"{e['run'].cpu / e['forward'].cpu:.2f}x cpu",
                )
            )
        marginal = (big["run"].wall - small["run"].wall) / (
            big["forward"].wall - small["forward"].wall
        )
        marginal_cpu = (big["run"].cpu - small["run"].cpu) / (
            big["forward"].cpu - small["forward"].cpu
        )
        rows.append(
            _row(
                "2",
                f"marginal overhead per dense tile ({max(sizes)} km2 minus {min(sizes)} km2)",
                "-",
                f"{marginal:.2f}x wall, {marginal_cpu:.2f}x cpu",
                "<= 1.25x: " + ("met" if marginal <= 1.25 else "not met"),
            )
        )
    if "stages" in dense:
        st = dense["stages"]
        other = sum(t.cpu for name, t in st.items() if name != "model")
        rows.append(
            _row(
                "2",
                f"where a dense tile's time goes (cpu s, {dense['stage_tiles']} tiles, no Beam)",
                ", ".join(f"{name} {t.cpu:.2f}" for name, t in st.items()),
                f"{(other + st['model'].cpu) / st['model'].cpu:.2f}x the model alone",
            )
        )
    rows.append(
        _row(
            "3",
            f"post-processing, decode + polygonize, {post['instances']} instances from the "
            "default model on the sample",
            f"{post['ours_inst_per_s']:,.0f} inst/s (baseline {post['baseline_inst_per_s']:,.0f})",
            f"{post['speedup']:.1f}x the per-instance baseline",
            ">= 3x: " + ("met" if post["speedup"] >= 3 else "not met"),
        )
    )
    rows.append(
        _row(
            "3",
            "  polygonize alone (decode is the same code on both sides)",
            f"{post['ours'].cpu:.3f} s vs {post['baseline'].cpu:.3f} s cpu "
            f"(decode {post['decode'].cpu:.3f} s)",
            f"{post['speedup_polygonize']:.1f}x",
        )
    )
    rss = {km2: e["run"].rss_mib for km2, e in sizes.items()}
    kind = "sparse: the sample's own imagery" if dense["quick"] else "dense mirrored imagery"
    rows.append(
        _row(
            "4",
            f"peak RSS of ob-infer, {' / '.join(str(k) for k in rss)} km2 ({kind})",
            " / ".join(f"{v:,.0f}" for v in rss.values()) + " MiB",
            f"{rss[max(rss)] / rss[min(rss)]:.2f}x largest / smallest",
            "<= 1.2x: " + ("met" if rss[max(rss)] / rss[min(rss)] <= 1.2 else "not met"),
        )
    )
    if dense["quick"]:
        steady = {"wall": run.wall, "cpu": run.cpu, "km2": sample["core_km2"], "fwd": fwd}
        where = "the sample (2 tiles, start-up included)"
    else:
        e = sizes[max(sizes)]
        steady = {"wall": e["run"].wall, "cpu": e["run"].cpu, "km2": e["core_km2"]}
        steady["fwd"] = e["forward"]
        where = f"dense {max(sizes)} km2"
    per_hour = steady["km2"] / steady["wall"] * 3600
    per_core_hour = steady["km2"] / steady["cpu"] * 3600
    rows.append(
        _row(
            "5",
            f"throughput on this CPU, {where}, km2 of tile cores",
            f"{per_hour:,.1f} km2/h ({per_core_hour:,.1f} km2 per CPU-core-hour)",
            f"model alone {steady['km2'] / steady['fwd'].wall * 3600:,.1f} km2/h",
        )
    )
    c = cost.cost_model(
        eff["gflops"] * 1e9 / models.TILE**2,
        tiles["tiles"],
        tiles["mean_core_km2"],
        cpu_s_per_km2=steady["cpu"] / steady["km2"],
        model_cpu_s_per_km2=steady["fwd"].cpu / steady["km2"],
        tile_px=tiles["mean_tile_px"],
        bytes_per_px=eff["bytes_per_px"],
    )
    for g in c["gpus"]:
        gpu = g["gpu"]
        rows.append(
            _row(
                "5",
                f"Africa on {gpu.name} at {100 * c['sustained']:.0f}% of its "
                f"{gpu.peak_tflops:.0f} TFLOP/s",
                f"{g['hours']:,.0f} GPU-h, ${g['usd']:,.0f} at ${gpu.usd_per_hour:.2f}/h",
                f"{g['tile_ms']:.1f} ms of GPU per tile; roofline {g['roofline_ms_fused']:.2f} "
                f"ms fused, {g['roofline_ms_unfused']:.2f} unfused (memory-bound: "
                f"{g['memory_bound_fused']})",
            )
        )
    rows.append(
        _row(
            "5",
            f"Africa on this CPU ({tiles['tiles']:,} tiles, from {where})",
            f"{c['cpu_core_hours']:,.0f} CPU-core-hours",
            f"model {c['model_cpu_core_hours'] / c['cpu_core_hours']:.0%} of it",
        )
    )
    print()
    print("\n".join(rows))

    print("\nspeed changes (before -> after, this run):")
    contiguous = by_name["torch fp32 (contiguous)"]
    for r in eff["rows"]:
        if "bf16" in r["name"] or r is contiguous:
            continue
        print(
            f"  {r['name']}: {contiguous['wall'] / r['wall']:.2f}x wall, "
            f"{contiguous['cpu'] / r['cpu']:.2f}x cpu faster than torch contiguous (512x512)"
        )
    if "torch_run" in sample:
        t = sample["torch_run"]
        print(
            f"  ob-infer on the sample, --backend auto ({sample['backend']}) vs torch "
            f"({sample['torch_backend']}): {t.wall / run.wall:.2f}x wall, {t.cpu / run.cpu:.2f}x "
            "cpu faster end to end"
        )
    for n, t in batches.items():
        print(
            f"  batch {n}: {t.cpu:.3f} s cpu per 512x512 tile, "
            f"{batches[1].cpu / t.cpu:.2f}x batch 1"
        )
    ref = next(r for r in margins if r["level"] == 14 and r["margin"] == 32)
    print("  tile level and margin (compute per km2 of core; Nairobi buildings cut):")
    for r in margins:
        print(
            f"    level {r['level']}, {r['margin']:>2.0f} m: "
            f"{r['px_per_km2'] / ref['px_per_km2']:.2f}x compute, {100 * r['cut']:.2f}% cut"
        )
    print(
        f"\nAfrica: {tiles['tiles']:,} level-14 tiles, mean core {tiles['mean_core_km2']:.4f} km2"
    )
    for line in cost.format_cost(c):
        print(line)
    if not args.quick:
        print("\n## ob-infer against the script a user would write (bench.baseline)")
        baseline.main(["--rounds", "2"])
        print("\n## runtimes: s/tile and agreement with fp32 (bench.runtimes)")
        runtimes.main([])
        print(f"\n## decode and polygonize against {BEFORE_SPEEDUPS} (bench.postprocess_rev)")
        postprocess_rev.main([BEFORE_SPEEDUPS])
    print(
        f"\nbench took {time.perf_counter() - start:.0f} s; load average at the end "
        f"{load_average():.1f} (other processes on this machine)"
    )


if __name__ == "__main__":
    main()
