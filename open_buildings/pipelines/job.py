"""The inference job's driver: Beam options, the runner chosen explicitly, ``build`` and ``run``.

``run(["--config", "pipelines/local.yaml"])`` runs a YAML job (tests and the Dataflow launcher
call it the same way; ``python -m open_buildings.pipelines.job`` too). ``ob-infer``
(:mod:`open_buildings.commands.infer`) builds the same config from flags and adds what a person
at a terminal needs.

Local runs pick Beam's FnApiRunner explicitly, in memory for one worker (on worker threads that
flush their output by size, never by a timer: see :func:`_direct`) or with worker processes for
several: the DirectRunner's default first tries to download and start the Prism binary.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from open_buildings.config import load_config
from open_buildings.errors import ConfigError
from open_buildings.pipelines import device_decode, transforms
from open_buildings.pipelines.config import InferConfig
from open_buildings.pipelines.runtime import (
    ModelRef,
    model_input_ranges,
    resolve_min_confidence,
    resolve_model,
)
from open_buildings.remote import is_remote, local_copy

#: The Flex Template's optional parameters, each a top-level key of the job config.
TEMPLATE_PARAMETERS = ("region", "imagery", "model", "output")


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
        return PipelineOptions([*_direct_flags(config.workers, config.local_threads), *extra])
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
    ]
    if not df.sdk_process_per_vcpu:
        flags.append("--experiments=no_use_multiple_sdk_containers")
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


def local_pipeline(workers: int = 1) -> beam.Pipeline:
    """Return an empty pipeline on this machine (in memory for one worker), never Prism."""
    return _direct(PipelineOptions(_direct_flags(workers)))


def _direct_flags(workers: int, threads: int = 1) -> list[str]:
    if threads > 1:  # InferConfig allows threads only with one worker
        return ["--direct_running_mode=multi_threading", f"--direct_num_workers={threads}"]
    mode = "in_memory" if workers == 1 else "multi_processing"
    return [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]


#: Beam's own worker threads flush their output every second from a timer thread that does not
#: wait for the thread encoding an element: an element cut in two ends up in two bundles of the
#: next stage, which decode garbage (``None``, "Unknown type tag"). 0 means "the default, 1 s"
#: to Beam, so local worker threads get an interval no run reaches and flush by size only, as
#: worker processes and Dataflow do.
_NO_TIMED_FLUSH_MS = 10**9


class _NoModeWarning(logging.Filter):
    """Drops the FnApiRunner's advice to use ``multi_threading`` for several in-memory workers:
    :func:`_direct` runs them as that mode would, on a safely configured environment."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "direct_running_mode" not in record.getMessage()


def _direct(options: PipelineOptions) -> beam.Pipeline:
    from apache_beam.options.pipeline_options import DirectOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.environments import (
        EmbeddedPythonGrpcEnvironment,
        python_sdk_capabilities,
    )

    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "multi_threading":
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    # multi_threading would replace the environment given here by Beam's default one
    direct.direct_running_mode = "in_memory"
    advice = logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner")
    if not any(isinstance(f, _NoModeWarning) for f in advice.filters):
        advice.addFilter(_NoModeWarning())
    threads = EmbeddedPythonGrpcEnvironment(
        data_buffer_time_limit_ms=_NO_TIMED_FLUSH_MS, capabilities=python_sdk_capabilities()
    )
    return beam.Pipeline(runner=FnApiRunner(default_environment=threads), options=options)


def make_pipeline(config: InferConfig, extra: Sequence[str] = ()) -> beam.Pipeline:
    """Return an empty pipeline on the config's runner, chosen explicitly (never Prism).

    Args:
        config: the job.
        extra: further Beam flags.
    """
    options = pipeline_options(config, extra)
    if config.runner == "direct":
        return _direct(options)
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    return beam.Pipeline(runner=DataflowRunner(), options=options)


def output_settings(config: InferConfig, model: ModelRef) -> tuple[InferConfig, dict[str, Any]]:
    """Resolve what decides which footprints are written, for the workers and the manifest.

    Args:
        config: the job; ``postprocess.min_confidence`` may be ``"auto"``.
        model: the checkpoint.

    Returns:
        The config with a numeric ``min_confidence``, and the manifest's ``settings``:
        ``min_confidence``, ``min_confidence_source``, ``clip_to_region``, ``tta``, ``decode``
        (``"host"`` or ``"device"``), ``write_probabilities``, and the ``region`` and
        ``imagery`` it ran on (for ``ob-map``).
    """
    threshold, source = resolve_min_confidence(model, config.postprocess.min_confidence)
    post = config.postprocess.model_copy(update={"min_confidence": threshold})
    settings = {
        "min_confidence": threshold,
        "min_confidence_source": source,
        "clip_to_region": not post.keep_whole_tiles,
        "tta": config.runtime.tta,
        "decode": device_decode.job_runtime(config).decode,
        "write_probabilities": config.write_probabilities,
        "region": _absolute(config.region) if config.region else sample_region(),
        "imagery": _absolute(config.imagery) if config.imagery else sample_imagery(),
    }
    return config.model_copy(update={"postprocess": post}), settings


def _absolute(spec: object) -> str:
    """A local path made absolute (the manifest outlives the working directory); URLs as given."""
    text = str(spec)
    return text if is_remote(text) or "{" in text else os.path.abspath(text)


def build(
    p: beam.Pipeline,
    config: InferConfig,
    *,
    model: ModelRef | None = None,
    work: transforms.WorkDir | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, beam.PCollection]:
    """Add the inference job described by ``config`` to ``p`` (nothing runs yet).

    Args:
        p: the pipeline (see :func:`make_pipeline`).
        config: the job.
        model: the resolved checkpoint; None resolves ``config.model``.
        work: a local folder for per-tile results (progress and resume).
        settings: from :func:`output_settings` when the caller already resolved ``config``
            with it; None resolves it here.

    Returns:
        The PCollections of :func:`transforms.build_inference`.
    """
    from open_buildings.geo.regions import read_region

    region = read_region(
        local_copy(config.region or sample_region(), prefix="ob-region-"),
        fix_invalid=config.fix_invalid,
        max_area_km2=config.max_region_km2,
    )
    model = model or resolve_model(
        config.model, config.model_sha256, moe_capacity=config.moe_capacity
    )
    if settings is None:
        config, settings = output_settings(config, model)
    return transforms.build_inference(
        p,
        region.geometry,
        config,
        model,
        imagery=config.imagery or sample_imagery(),
        work=work,
        settings=settings,
        input_ranges=model_input_ranges(model),
    )


def run(argv: Sequence[str] | None = None) -> Any:
    """Run a YAML-configured inference job; the entry point tests and Dataflow launches use.

    Flags: ``--config FILE`` (required; local or ``gs://``), ``-o KEY=VALUE`` (repeatable; nested
    keys as ``runtime.device=cuda``; the value is YAML), ``--work-dir DIR``, ``--resume``,
    ``--no-wait``; every other flag is passed to Beam (e.g. ``--job_name``) and wins over the
    config. ``--region``, ``--imagery``, ``--model`` and ``--output`` are the Flex Template's
    parameters (``deploy/flex-template-metadata.json``; Dataflow passes each as ``--name=value``):
    each is the override ``-o name=value``.

    Args:
        argv: the flags; None reads ``sys.argv[1:]``.

    Returns:
        The Beam ``PipelineResult`` (finished, unless ``--no-wait``).
    """
    parser = argparse.ArgumentParser(prog="open_buildings.pipelines.job")
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE", dest="overrides"
    )
    for key in TEMPLATE_PARAMETERS:
        parser.add_argument(f"--{key}", dest=f"template_{key}", help=f"= -o {key}=VALUE")
    parser.add_argument("--work-dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-wait", action="store_true")
    args, beam_args = parser.parse_known_args(argv)
    if args.resume and not args.work_dir:
        raise ConfigError("--resume needs the --work-dir of the run to continue")
    overrides = list(args.overrides)
    for key in TEMPLATE_PARAMETERS:
        if getattr(args, f"template_{key}"):
            overrides.append(f"{key}={getattr(args, f'template_{key}')}")
    config = load_config(InferConfig, local_copy(args.config, prefix="ob-config-"), overrides)
    p = make_pipeline(config, beam_args)
    work = transforms.WorkDir(args.work_dir, args.resume) if args.work_dir else None
    build(p, config, work=work)
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


if __name__ == "__main__":
    run()
