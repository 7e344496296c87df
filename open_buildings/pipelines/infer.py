"""The inference job's driver: options, runner choice, ``run(argv)``, and ``ob-infer``.

``run(["--config", "pipelines/local.yaml"])`` runs a YAML job (tests call it the same way);
``ob-infer REGION`` builds the same config from flags and adds what a person at a terminal needs:
refusing to clobber a folder, a coverage check, a progress bar, ``--resume`` and a summary.

Local runs pick Beam's FnApiRunner explicitly, in memory for one worker or with worker processes
for several: the DirectRunner's default first tries to download and start the Prism binary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from open_buildings.errors import ConfigError, ImageryError, InferenceError, OpenBuildingsError
from open_buildings.geo import footprints, grid
from open_buildings.pipelines import stages, transforms
from open_buildings.pipelines.config import InferConfig, load_config, parse_config
from open_buildings.pipelines.inference import ModelRef, resolve_model

WORK_DIR = ".work"


def sample_region() -> str:
    """Return the path of the embedded sample region (works from a wheel too)."""
    from open_buildings.resources import resource

    return str(resource("geo", "sample", "region.geojson"))


def sample_imagery() -> str:
    """Return the path of the embedded sample imagery's STAC ItemCollection."""
    from open_buildings.resources import resource

    return str(resource("geo", "sample", "items.json"))


def pipeline_options(config: InferConfig, extra: Sequence[str] = ()) -> PipelineOptions:
    """Return Beam options for the config's runner.

    Args:
        config: the job.
        extra: further Beam flags, which win over the config.

    Returns:
        The options. For ``runner: direct`` they choose in-memory execution for one worker and
        worker processes for several; for ``runner: dataflow`` they carry the project, region,
        container image, machine type and GPUs.
    """
    if config.runner == "direct":
        mode = "in_memory" if config.workers == 1 else "multi_processing"
        flags = [f"--direct_running_mode={mode}", f"--direct_num_workers={config.workers}"]
        return PipelineOptions([*flags, *extra])
    df = config.dataflow
    if df is None:  # checked by the config too
        raise ConfigError("runner 'dataflow' needs a 'dataflow:' section")
    flags = [
        "--runner=DataflowRunner",
        f"--project={df.project}",
        f"--region={df.region}",
        f"--temp_location={df.temp_location}",
        f"--staging_location={df.staging_location or df.temp_location}",
        f"--sdk_container_image={df.sdk_container_image}",
        "--sdk_location=container",
        f"--worker_machine_type={df.machine_type}",
        f"--max_num_workers={df.max_num_workers}",
        f"--disk_size_gb={df.disk_size_gb}",
        f"--number_of_worker_harness_threads={df.number_of_worker_harness_threads}",
        "--experiments=use_runner_v2",
        "--experiments=no_use_multiple_sdk_containers",
    ]
    if df.gpu_type and df.gpu_count:
        flags.append(
            "--dataflow_service_options="
            f"worker_accelerator=type:{df.gpu_type};count:{df.gpu_count};install-nvidia-driver"
        )
    if df.job_name:
        flags.append(f"--job_name={df.job_name}")
    if df.service_account_email:
        flags.append(f"--service_account_email={df.service_account_email}")
    if df.subnetwork:
        flags.append(f"--subnetwork={df.subnetwork}")
    if not df.use_public_ips:
        flags.append("--no_use_public_ips")
    return PipelineOptions([*flags, *extra])


def make_pipeline(config: InferConfig, extra: Sequence[str] = ()) -> beam.Pipeline:
    """Return an empty pipeline on the config's runner, chosen explicitly (never Prism).

    Args:
        config: the job.
        extra: further Beam flags.
    """
    options = pipeline_options(config, extra)
    if config.runner == "direct":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    return beam.Pipeline(runner=DataflowRunner(), options=options)


def _local_copy(path: str) -> str:
    if not stages.is_remote(path):
        return path
    from apache_beam.io.filesystems import FileSystems

    local = os.path.join(tempfile.mkdtemp(prefix="ob-region-"), path.rsplit("/", 1)[-1])
    with FileSystems.open(path) as source, open(local, "wb") as target:
        shutil.copyfileobj(source, target)
    return local


def build(
    p: beam.Pipeline,
    config: InferConfig,
    *,
    model: ModelRef | None = None,
    work_dir: str | None = None,
    resume: bool = False,
) -> dict[str, beam.PCollection]:
    """Add the inference job described by ``config`` to ``p`` (nothing runs yet).

    Args:
        p: the pipeline (see :func:`make_pipeline`).
        config: the job.
        model: the resolved checkpoint; None resolves ``config.model``.
        work_dir: a local folder for per-tile results (progress and resume).
        resume: reuse per-tile results already in ``work_dir``.

    Returns:
        The PCollections of :func:`transforms.build_inference`.
    """
    from open_buildings.geo.regions import read_region

    region = read_region(
        _local_copy(config.region or sample_region()),
        fix_invalid=config.fix_invalid,
        max_area_km2=config.max_region_km2,
    )
    settings = transforms.Settings(
        spec=grid.GridSpec(level=config.tile_level, margin_m=config.margin_m),
        imagery=config.imagery or sample_imagery(),
        output=config.output,
        formats=config.formats,
        shard_level=config.shard_level,
        min_confidence=config.min_confidence,
        simplify_m=config.simplify_m,
        min_area_m2=config.min_area_m2,
        work_dir=work_dir,
        resume=resume,
    )
    return transforms.build_inference(
        p,
        region.geometry,
        settings,
        model or resolve_model(config.model, config.model_sha256, moe_capacity=config.moe_capacity),
        device=config.device,
        bf16=config.bf16,
        min_batch_size=config.min_batch_size,
        max_batch_size=config.max_batch_size,
        share_model_across_processes=config.share_model_across_processes,
        backend=config.backend,
    )


def run(argv: Sequence[str] | None = None) -> Any:
    """Run a YAML-configured inference job; the entry point tests and Dataflow launches use.

    Flags: ``--config FILE`` (required; local or ``gs://``), ``--region``, ``--imagery``,
    ``--model``, ``--output`` (override the config's), ``--set KEY=VALUE`` (repeatable; the value
    is YAML, e.g. ``--set workers=2``), ``--work-dir DIR``, ``--resume``, ``--no-wait``; every
    other flag is passed to Beam (e.g. ``--job_name``) and wins over the config.

    Args:
        argv: the flags; None reads ``sys.argv[1:]``.

    Returns:
        The Beam ``PipelineResult`` (finished, unless ``--no-wait``).
    """
    import yaml

    parser = argparse.ArgumentParser(prog="open_buildings.pipelines.infer")
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work-dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-wait", action="store_true")
    for key in ("region", "imagery", "model", "output"):
        parser.add_argument(f"--{key}", dest=f"override_{key}", help=f"replaces the config's {key}")
    args, beam_args = parser.parse_known_args(argv)
    overrides: dict[str, Any] = {
        key: getattr(args, f"override_{key}")
        for key in ("region", "imagery", "model", "output")
        if getattr(args, f"override_{key}")
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    config = load_config(_local_copy(args.config), **overrides)
    p = make_pipeline(config, beam_args)
    build(p, config, work_dir=args.work_dir, resume=args.resume)
    result = p.run()
    if not args.no_wait:
        result.wait_until_finish()
    return result


def counters(result: Any) -> dict[str, int]:
    """Return the pipeline's ``open_buildings`` counters (committed values) by name."""
    out = dict.fromkeys(transforms.COUNTERS, 0)
    query = result.metrics().query(MetricsFilter().with_namespace(transforms.NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out


# ---------------------------------------------------------------------------------------------
# ob-infer


def _owned_outputs(folder: Path) -> list[Path]:
    """The files and folders a previous run of this pipeline left in ``folder``."""
    names = {footprints.MANIFEST_NAME, stages.DEAD_LETTER_NAME, WORK_DIR}
    out = []
    for entry in folder.iterdir():
        shard = entry.name.endswith(
            ("_buildings" + footprints.CSV_SUFFIX, "_buildings" + footprints.PARQUET_SUFFIX)
        )
        if entry.name in names or shard:
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


class _Progress:
    """A tqdm bar fed by counting finished per-tile files while the pipeline runs."""

    def __init__(self, work_dir: Path, total: int, enabled: bool) -> None:
        self._dirs = [work_dir / "tiles", work_dir / "failed"]
        self._total = total
        self._enabled = enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _done(self) -> int:
        return sum(len(os.listdir(d)) for d in self._dirs if d.is_dir())

    def _loop(self) -> None:
        from tqdm import tqdm

        with tqdm(
            total=self._total, unit="tile", desc="tiles", disable=not self._enabled, file=sys.stderr
        ) as bar:
            while True:
                stopping = self._stop.wait(0.5)
                done = min(self._done(), self._total)
                bar.update(done - bar.n)
                if stopping:
                    break

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def infer_parser() -> argparse.ArgumentParser:
    """Return the ``ob-infer`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ob-infer",
        description="Find the buildings in a region: tiles -> model -> polygons -> "
        "S2-sharded CSV.gz / GeoParquet files. With no arguments it runs on the embedded "
        "Nairobi sample with the default model.",
    )
    parser.add_argument("region", nargs="?", help="region GeoJSON (default: the embedded sample)")
    parser.add_argument("--imagery", metavar="SRC", help="GeoTIFF/COG, folder, XYZ or STAC JSON")
    parser.add_argument("--model", default="default", help="zoo name or .safetensors path")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: a fresh one)")
    parser.add_argument("--format", default="csv,parquet", help="csv, parquet or csv,parquet")
    parser.add_argument("--min-confidence", type=float, default=0.0, metavar="X")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="local processes")
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
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="how a CPU runs the model (auto: ONNX Runtime when installed, else PyTorch)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="largest inference batch (default: 1 on a CPU, where larger batches are no faster "
        "per tile but hold 3x the memory at 4 tiles (bench/README.md); 4 on a GPU)",
    )
    parser.add_argument("--tile-level", type=int, default=14, help=argparse.SUPPRESS)
    parser.add_argument("--shard-level", type=int, default=6, help="S2 level of output shards")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def infer_main(argv: Sequence[str] | None = None) -> int:
    """``ob-infer``: run inference over a region on this machine.

    Returns:
        The exit status: 0 on success (even if some tiles went to the dead-letter list), 2 when
        the input or the output folder is refused, 1 when the run itself failed.
    """
    args = infer_parser().parse_args(argv)
    try:
        return _infer(args)
    except (OpenBuildingsError, ValueError, OSError) as exc:
        print(f"ob-infer: error: {exc}", file=sys.stderr)
        return 2


def _infer(args: argparse.Namespace) -> int:
    from open_buildings.geo.imagery import open_imagery
    from open_buildings.geo.regions import read_region

    start = time.perf_counter()
    out = Path(args.out or f"ob-output-{dt.datetime.now():%Y%m%d-%H%M%S}")
    config = parse_config(
        {
            "region": args.region,
            "imagery": args.imagery,
            "model": args.model,
            "output": str(out),
            "formats": [f.strip() for f in args.format.split(",") if f.strip()],
            "min_confidence": args.min_confidence,
            "workers": args.workers,
            "bf16": args.bf16,
            "moe_capacity": args.moe_capacity,
            "device": args.device,
            "backend": args.backend,
            "max_batch_size": args.batch_size or (1 if args.device == "cpu" else 4),
            "tile_level": args.tile_level,
            "shard_level": args.shard_level,
        },
        source="ob-infer flags",
    )
    region = read_region(config.region or sample_region(), max_area_km2=config.max_region_km2)
    imagery = config.imagery or sample_imagery()
    _check_coverage(open_imagery(imagery), region, imagery)
    model = resolve_model(config.model, moe_capacity=config.moe_capacity)
    if config.device == "cuda":
        stages.resolve_device("cuda")
    _prepare_output(out, overwrite=args.overwrite, resume=args.resume)
    work_dir = out / WORK_DIR
    spec = grid.GridSpec(level=config.tile_level, margin_m=config.margin_m)
    total = grid.count_tiles(region.geometry, spec)
    print(
        f"ob-infer: {region.area_km2:,.3f} km2, {total:,} tiles, model {model.name}, "
        f"{config.workers} worker(s) -> {out}",
        file=sys.stderr,
    )
    p = make_pipeline(config)
    build(p, config, model=model, work_dir=str(work_dir), resume=args.resume)
    try:
        with _Progress(work_dir, total, enabled=not args.no_progress):
            result = p.run()
            result.wait_until_finish()
    except Exception as exc:  # noqa: BLE001 - any worker error ends the run; say how to go on
        print(
            f"ob-infer: the run failed ({type(exc).__name__}: {str(exc).strip()[:2000]}). "
            f"Finished tiles are kept in {work_dir}; rerun with --resume --out {out} to continue",
            file=sys.stderr,
        )
        return 1
    found = counters(result)
    manifest = json.loads((out / footprints.MANIFEST_NAME).read_text(encoding="utf-8"))
    dead = stages.load_dead_letters(out / stages.DEAD_LETTER_NAME)
    shutil.rmtree(work_dir, ignore_errors=True)
    elapsed = time.perf_counter() - start
    first = {"csv": "csv.gz", "parquet": "parquet"}[config.formats[0]]
    buildings = sum(f["rows"] for f in manifest["files"] if f["format"] == first)
    print(f"buildings found: {buildings:,}")
    print(
        f"area: {region.area_km2:,.3f} km2 region, {found['m2_covered'] / 1e6:,.3f} km2 of tiles "
        f"with imagery ({total:,} tiles, {found['tiles_empty']:,} without imagery)"
    )
    print(f"time: {elapsed:,.1f} s")
    print(f"footprints: {out.resolve()} ({len(manifest['files'])} files + manifest.json)")
    where = f" (see {out / stages.DEAD_LETTER_NAME})" if dead else ""
    print(f"dead letters: {len(dead)} tile(s) failed{where}")
    return 0


if __name__ == "__main__":
    run()
