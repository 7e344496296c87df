"""``ob-infer [REGION]``: footprints for a region on this machine, as a local Beam run.

It builds the job config (``pipelines.config.InferConfig``) from flags and runs the same graph a
YAML job does (``pipelines.job``), adding what a person at a terminal needs: refusing to clobber a
folder, a coverage check before anything runs, a progress bar, ``--resume`` and a summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from open_buildings.commands import add_version, run_command
from open_buildings.commands.progress import TileProgress
from open_buildings.config import apply_overrides, validate_config
from open_buildings.errors import ImageryError, InferenceError
from open_buildings.geo import footprints, grid
from open_buildings.pipelines import probabilities, sinks
from open_buildings.pipelines.config import AUTO, InferConfig
from open_buildings.pipelines.job import (
    build,
    counters,
    make_pipeline,
    output_settings,
    sample_imagery,
    sample_region,
)
from open_buildings.pipelines.runtime import check_runnable, resolve_device, resolve_model
from open_buildings.pipelines.torch_runtime import BACKENDS
from open_buildings.pipelines.transforms import WorkDir

WORK_DIR = ".work"


def _owned_outputs(folder: Path) -> list[Path]:
    """The files and folders a previous run of this pipeline left in ``folder``, including the
    temp files of writes a killed run never finished (``footprints.atomic_write``'s names)."""
    names = {
        footprints.MANIFEST_NAME,
        sinks.DEAD_LETTER_NAME,
        sinks.PARTS_FOLDER,
        WORK_DIR,
        probabilities.FOLDER,
    }
    out = []
    for entry in folder.iterdir():
        name = footprints.unfinished_target(entry.name) or entry.name
        shard = name.endswith(
            ("_buildings" + footprints.CSV_SUFFIX, "_buildings" + footprints.PARQUET_SUFFIX)
        )
        if name in names or shard:
            out.append(entry)
    return out


def _prepare_output(out: Path, *, overwrite: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InferenceError(f"--out {out} is a file; give a folder")
    if out.exists() and any(out.iterdir()):
        if not (overwrite or resume):
            raise InferenceError(
                f"the output folder {out} is not empty; pass --resume to continue the run that "
                "wrote it, --overwrite to replace its footprints, or choose another --out"
            )
        if resume and not (out / WORK_DIR).is_dir():
            raise InferenceError(
                f"--resume: {out} holds no unfinished run ({WORK_DIR}/ is missing); "
                "use --overwrite to start again"
            )
        owned = _owned_outputs(out)
        for entry in owned:
            if entry.name == WORK_DIR and resume:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _check_coverage(source: Any, region: Any, imagery: str) -> None:
    west, south, east, north = source.bounds_lonlat()
    rw, rs, re_, rn = region.bounds
    if west > re_ or east < rw or south > rn or north < rs:
        raise ImageryError(
            f"the imagery {imagery} does not cover the region {region.source}: the imagery lies "
            f"at lon {west:.5f}..{east:.5f}, lat {south:.5f}..{north:.5f}, the region at lon "
            f"{rw:.5f}..{re_:.5f}, lat {rs:.5f}..{rn:.5f}. Pass --imagery for this region, or a "
            "region inside the imagery"
        )


def _formats(text: str) -> str:
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    wrong = [f for f in chosen if f not in ("csv", "parquet")]
    if not chosen or wrong:
        raise argparse.ArgumentTypeError(
            f"{', '.join(wrong) or repr(text)} is not a shard format ob-infer writes; choose "
            "csv, parquet or csv,parquet (ob-download --format geojson converts a region's "
            "buildings to GeoJSON)"
        )
    return ",".join(dict.fromkeys(chosen))


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1 (e.g. 0.05)")
    return value


def _bands(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"--bands takes three 1-based band numbers R,G,B (e.g. 1,1,1), got {text!r}"
        )
    return values  # type: ignore[return-value]


def _confidence(text: str) -> float | str:
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"give a number in [0, 1] or 'auto', got {text!r}")
    return value


def infer_parser() -> argparse.ArgumentParser:
    """Return the ``ob-infer`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ob-infer",
        description="Find the buildings in a region: tiles -> model -> polygons -> "
        "S2-sharded CSV.gz / GeoParquet files. With no arguments it runs on the embedded "
        "Nairobi sample with the default model.",
    )
    add_version(parser, default_model=True)
    parser.add_argument("region", nargs="?", help="region GeoJSON (default: the embedded sample)")
    parser.add_argument("--imagery", metavar="SRC", help="GeoTIFF/COG, folder, XYZ or STAC JSON")
    parser.add_argument(
        "--bands",
        type=_bands,
        metavar="R,G,B",
        help="which 1-based bands are red, green and blue (e.g. 1,1,1 for a grey image, 4,3,2 "
        "for a 4-band file); default: from the files' colour interpretation",
    )
    parser.add_argument(
        "--fix-invalid",
        action="store_true",
        help="repair self-intersecting region polygons (with a warning) instead of failing",
    )
    parser.add_argument("--model", default="default", help="zoo name or .safetensors path")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: a fresh one)")
    parser.add_argument(
        "--format",
        type=_formats,
        default="csv,parquet",
        help="csv, parquet or csv,parquet (the shard formats; ob-download converts a region's "
        "buildings to GeoJSON)",
    )
    parser.add_argument(
        "--min-confidence",
        type=_confidence,
        default=AUTO,
        metavar="X|auto",
        help="drop buildings below this confidence; auto (default): the model's calibrated "
        "best-F1 threshold (ob-calibrate); 0 writes everything",
    )
    parser.add_argument(
        "--keep-whole-tiles",
        action="store_true",
        help="write every building of every tile touching the region (default: only those "
        "whose centroid lies inside the region)",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the probabilities of the 8 flips and quarter "
        "turns of each tile (about 9x the CPU time). Averaging lowers the confidences, and the "
        "model's stored threshold was measured without TTA, so give --min-confidence too "
        "(models/default/MODEL_CARD.md has the measured threshold)",
    )
    parser.add_argument(
        "--write-probabilities",
        action="store_true",
        help="also write each tile's building/interior probabilities as a COG under "
        "OUT/probabilities/ (a teacher's soft targets for ob-train self-training)",
    )
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="local processes")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="tiles worked on at once in one process, sharing the model (reading and "
        "polygonizing one tile while another is in the model); default 2 (1 with --workers)",
    )
    parser.add_argument(
        "--max-failed-fraction",
        type=_fraction,
        default=1.0,
        metavar="F",
        help="exit with status 2 when more than this share of the tiles failed (default 1: "
        "only when every tile failed; failed tiles are always listed in dead_letter.jsonl)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace a previous run's files")
    mode.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument(
        "--moe-capacity",
        type=float,
        metavar="F",
        help="V-MoE models only: expert capacity factor (e.g. 0.5 runs about half the expert "
        "FLOPs, dropping the least confident tokens first)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="how a CPU runs the model (auto: OpenVINO bf16 where the CPU has native bf16, "
        "else ONNX Runtime fp32, else PyTorch)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="largest inference batch (default: 1 on a CPU, where larger batches are no faster "
        "per tile but hold 3x the memory at 4 tiles (bench/README.md); 4 on a GPU)",
    )
    parser.add_argument("--tile-level", type=int, default=14, help=argparse.SUPPRESS)
    parser.add_argument("--shard-level", type=int, default=6, help="S2 level of output shards")
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="set any job-config key (pipelines/config.py), e.g. -o grid.margin_m=16 "
        "-o postprocess.simplify_m=0.25; applied after the flags",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--map",
        action="store_true",
        help="also write map.html beside the footprints: one self-contained page (ob-map)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``ob-infer``: run inference over a region on this machine.

    Returns:
        The exit status: 0 on success (even if some tiles went to the dead-letter list, which
        is then warned about), 2 when the input or the output folder is refused, when every
        tile failed, or when more than ``--max-failed-fraction`` of them did; 1 when the run
        itself failed.
    """
    return run_command("ob-infer", _infer, infer_parser().parse_args(argv))


def _infer(args: argparse.Namespace) -> int:
    from open_buildings.geo.imagery import open_imagery
    from open_buildings.geo.regions import read_region

    start = time.perf_counter()
    out = Path(args.out or f"ob-output-{dt.datetime.now():%Y%m%d-%H%M%S}")
    device = args.device
    flags = {
        "region": args.region,
        "imagery": args.imagery,
        "bands": args.bands,
        "fix_invalid": args.fix_invalid,
        "model": args.model,
        "moe_capacity": args.moe_capacity,
        "output": str(out),
        "formats": [f.strip() for f in args.format.split(",") if f.strip()],
        "write_probabilities": args.write_probabilities,
        "shard_level": args.shard_level,
        "workers": args.workers,
        "threads": args.threads,
        "grid": {"tile_level": args.tile_level},
        "postprocess": {
            "min_confidence": args.min_confidence,
            "keep_whole_tiles": args.keep_whole_tiles,
        },
        "runtime": {
            "device": device,
            "bf16": args.bf16,
            "backend": args.backend,
            "tta": args.tta,
            "max_batch_size": args.batch_size or (1 if device == "cpu" else 4),
        },
    }
    config = validate_config(
        InferConfig, apply_overrides(flags, args.overrides), source="ob-infer flags"
    )
    out = Path(config.output)
    region = read_region(
        config.region or sample_region(),
        max_area_km2=config.max_region_km2,
        fix_invalid=config.fix_invalid,
    )
    imagery = config.imagery or sample_imagery()
    _check_coverage(open_imagery(imagery, bands=config.bands), region, imagery)
    model = resolve_model(config.model, moe_capacity=config.moe_capacity)
    check_runnable(model, config.runtime)
    if config.runtime.device == "cuda":
        resolve_device("cuda")
    _prepare_output(out, overwrite=args.overwrite, resume=args.resume)
    work_dir = out / WORK_DIR
    total = grid.count_tiles(region.geometry, config.grid.spec)
    config, settings = output_settings(config, model)
    print(
        f"ob-infer: {region.area_km2:,.3f} km2, {total:,} tiles, model {model.name}, "
        f"{config.workers} worker(s) x {config.local_threads} thread(s) -> {out}\n"
        f"ob-infer: confidence >= {settings['min_confidence']:.3f}: "
        f"{settings['min_confidence_source']}",
        file=sys.stderr,
    )
    p = make_pipeline(config)
    build(p, config, model=model, work=WorkDir(str(work_dir), args.resume), settings=settings)
    try:
        with TileProgress(work_dir, total, enabled=not args.no_progress):
            result = p.run()
            result.wait_until_finish()
    except Exception as exc:  # noqa: BLE001 - any worker error ends the run; say how to go on
        print(
            f"ob-infer: the run failed ({type(exc).__name__}: {str(exc).strip()[:2000]}). "
            f"Finished tiles are kept in {work_dir}; rerun with --resume --out {out} to continue",
            file=sys.stderr,
        )
        return 1
    found = {**counters(result), **sinks.job_stats(work_dir)}  # the whole job, resumed or not
    manifest = json.loads((out / footprints.MANIFEST_NAME).read_text(encoding="utf-8"))
    dead = sinks.load_dead_letters(out / sinks.DEAD_LETTER_NAME)
    if not dead:  # kept otherwise, so that --resume retries only the failed tiles
        shutil.rmtree(work_dir, ignore_errors=True)
    elapsed = time.perf_counter() - start
    first = {"csv": "csv.gz", "parquet": "parquet"}[config.formats[0]]
    buildings = sum(f["rows"] for f in manifest["files"] if f["format"] == first)
    print(f"buildings found: {buildings:,}")
    if settings["clip_to_region"]:
        print(
            f"outside the region: {found['outside_region']:,} dropped "
            "(--keep-whole-tiles keeps them)"
        )
    print(
        f"area: {region.area_km2:,.3f} km2 region, {found['m2_covered'] / 1e6:,.3f} km2 of tiles "
        f"with imagery ({total:,} tiles, {found['tiles_empty']:,} without imagery)"
    )
    print(f"time: {elapsed:,.1f} s")
    print(f"footprints: {out.resolve()} ({len(manifest['files'])} files + manifest.json)")
    if config.write_probabilities:
        print(f"probabilities: {(out / probabilities.FOLDER).resolve()} (one COG per tile)")
    where = f" (see {out / sinks.DEAD_LETTER_NAME})" if dead else ""
    print(f"dead letters: {len(dead)} tile(s) failed{where}")
    _warn_unfamiliar(manifest.get("domain") or {}, out)
    status = _failed_tiles_status(dead, total, args.max_failed_fraction, out)
    if args.map:
        from open_buildings.commands.map import write_map

        page = write_map(out)
        print(f"map: open {page.resolve().as_uri()} in a browser (it needs no network)")
    return status


def _failed_tiles_status(dead: list, total: int, max_fraction: float, out: Path) -> int:
    """Exit 2 when no tile could be processed or too many failed; else 0 (with a warning)."""
    failed = len({d.tile_id for d in dead})
    if not failed:
        return 0
    retry = (
        f"fix the cause, then run the same command with --resume --out {out} to retry only the "
        "failed tiles"
    )
    first = dead[0].reason[:300]
    share = failed / total
    if failed >= total:
        what = f"no tile could be processed: all {total:,} failed. Nothing was found"
    elif share > max_fraction:
        what = (
            f"{failed:,} of {total:,} tiles failed ({share:.1%}), more than "
            f"--max-failed-fraction {max_fraction:g}"
        )
    else:
        print(
            f"ob-infer: warning: {failed:,} of {total:,} tiles failed ({share:.1%}), so their "
            f"buildings are missing (the first: {first}); {retry}",
            file=sys.stderr,
        )
        return 0
    print(f"ob-infer: error: {what} (the first: {first}); {retry}", file=sys.stderr)
    return 2


def _warn_unfamiliar(domain: dict, out: Path) -> None:
    """Say once which tiles looked unlike the model's training imagery (nothing was dropped)."""
    tiles = domain.get("tiles") or {}
    if not domain.get("checked"):
        print(
            "ob-infer: the model records no training-imagery ranges: no tile was checked "
            "against them (ob-calibrate --training-imagery adds them)",
            file=sys.stderr,
        )
        return
    if not tiles:
        return
    shown = "; ".join(f"{t}: {', '.join(r)}" for t, r in list(tiles.items())[:10])
    more = f" (+{len(tiles) - 10} more)" if len(tiles) > 10 else ""
    print(
        f"ob-infer: warning: {len(tiles)} tile(s) do not look like the imagery the model was "
        f"trained on ({domain.get('measured_on')}), so its footprints there may be wrong: "
        f"{shown}{more}. Check the bands (--bands) and the imagery; every footprint was "
        f"written, and the tiles are listed in {out / footprints.MANIFEST_NAME}",
        file=sys.stderr,
    )
