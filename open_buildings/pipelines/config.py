"""The inference job's typed configuration, loaded from YAML (``pipelines/*.yaml``).

Every key is checked: an unknown or misspelt key is a :class:`~open_buildings.errors.ConfigError`
that names it, never a silent default. The same :class:`InferConfig` drives ``ob-infer`` on a
laptop and a Dataflow job over a continent; only :attr:`InferConfig.runner` and
:attr:`InferConfig.dataflow` differ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from open_buildings.errors import ConfigError

Format = Literal["csv", "parquet"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataflowConfig(_Strict):
    """Where and on what a Dataflow job runs.

    Attributes:
        project: the Google Cloud project id.
        region: the Dataflow region, e.g. ``"europe-west4"``.
        temp_location: a ``gs://`` folder for temporary files.
        staging_location: a ``gs://`` folder for staged files; defaults to ``temp_location``.
        sdk_container_image: the worker image built from ``deploy/Dockerfile``.
        machine_type: the worker machine type, e.g. ``"n1-standard-8"``.
        gpu_type: the accelerator, e.g. ``"nvidia-tesla-t4"``; None for CPU workers.
        gpu_count: accelerators per worker.
        max_num_workers: the autoscaling cap.
        disk_size_gb: boot disk per worker (the image with CUDA torch is large).
        job_name: the Dataflow job name; None lets Beam choose one.
        service_account_email: the workers' service account; None uses the default.
        subnetwork: a subnetwork URL for workers without public IPs; None uses the default.
        use_public_ips: whether workers get public IPs.
        number_of_worker_harness_threads: threads per worker process (1-2 keeps one GPU busy
            without running out of GPU memory).
    """

    project: str
    region: str
    temp_location: str
    staging_location: str | None = None
    sdk_container_image: str
    machine_type: str = "n1-standard-8"
    gpu_type: str | None = "nvidia-tesla-t4"
    gpu_count: int = Field(default=1, ge=0, le=8)
    max_num_workers: int = Field(default=100, ge=1)
    disk_size_gb: int = Field(default=100, ge=30)
    job_name: str | None = None
    service_account_email: str | None = None
    subnetwork: str | None = None
    use_public_ips: bool = True
    number_of_worker_harness_threads: int = Field(default=1, ge=1)

    @field_validator("temp_location", "staging_location")
    @classmethod
    def _gcs(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("gs://"):
            raise ValueError(f"must be a gs:// path, got {value!r}")
        return value


class InferConfig(_Strict):
    """One inference job: from a region and imagery to sharded footprint files.

    Attributes:
        region: the region GeoJSON (local path or ``gs://``); None means the embedded sample.
        imagery: the imagery source (GeoTIFF/COG files, a folder, an XYZ template, a STAC JSON);
            None means the embedded sample.
        model: a zoo name (``models/<name>/``) or a path to a ``.safetensors`` checkpoint.
        model_sha256: the checkpoint's expected sha256; None computes it at launch (local files)
            or reads the ``.sha256`` sidecar (remote files).
        output: the output folder (local or ``gs://``).
        formats: which files to write per shard.
        min_confidence: drop buildings whose confidence is below this.
        tile_level: S2 level of the tile cores.
        margin_m: how far beyond its core each tile is read, in metres.
        shard_level: S2 level of the output shards (Open Buildings v3 used level 4 files; 6 keeps
            an African shard at a few hundred MB).
        simplify_m: polygon simplification tolerance in metres.
        min_area_m2: drop buildings smaller than this.
        min_batch_size: the smallest batch RunInference forms.
        max_batch_size: the largest batch RunInference forms.
        device: ``"cpu"`` or ``"cuda"``; ``"cuda"`` fails loudly on a worker without a GPU.
        bf16: run the model under bfloat16 autocast.
        moe_capacity: the eval capacity factor of a V-MoE model's expert layers (lower runs
            fewer expert FLOPs and drops the least confident tokens first); None keeps the
            checkpoint's. An error for a model without expert layers.
        share_model_across_processes: one model per machine instead of one per process.
        backend: how a CPU worker runs the model: ``"auto"`` (ONNX Runtime when installed and
            the model converts, else PyTorch in channels_last), ``"torch"`` or ``"onnxruntime"``.
        runner: ``"direct"`` (this machine) or ``"dataflow"``.
        workers: local worker processes (1 runs in memory).
        max_region_km2: refuse regions larger than this.
        fix_invalid: repair self-intersecting region polygons instead of failing.
        dataflow: where a Dataflow job runs; required when ``runner`` is ``"dataflow"``.
    """

    region: str | None = None
    imagery: str | None = None
    model: str = "default"
    model_sha256: str | None = None
    output: str
    formats: tuple[Format, ...] = ("csv", "parquet")
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    tile_level: int = Field(default=14, ge=10, le=18)
    margin_m: float = Field(default=32.0, ge=0.0)
    shard_level: int = Field(default=6, ge=0, le=14)
    simplify_m: float = Field(default=0.5, ge=0.0)
    min_area_m2: float = Field(default=1.0, ge=0.0)
    min_batch_size: int = Field(default=1, ge=1)
    max_batch_size: int = Field(default=4, ge=1)
    device: Literal["cpu", "cuda"] = "cpu"
    bf16: bool = False
    moe_capacity: float | None = Field(default=None, gt=0.0)
    share_model_across_processes: bool = False
    backend: Literal["auto", "torch", "onnxruntime"] = "auto"
    runner: Literal["direct", "dataflow"] = "direct"
    workers: int = Field(default=1, ge=1)
    max_region_km2: float = Field(default=1_000_000.0, gt=0.0)
    fix_invalid: bool = False
    dataflow: DataflowConfig | None = None

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("give at least one format: csv, parquet")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self) -> InferConfig:
        if self.min_batch_size > self.max_batch_size:
            raise ValueError(
                f"min_batch_size ({self.min_batch_size}) exceeds max_batch_size "
                f"({self.max_batch_size})"
            )
        if self.shard_level > self.tile_level:
            raise ValueError(
                f"shard_level ({self.shard_level}) must not be finer than tile_level "
                f"({self.tile_level}): a shard is a union of whole tiles"
            )
        if self.runner == "dataflow" and self.dataflow is None:
            raise ValueError("runner 'dataflow' needs a 'dataflow:' section")
        return self

    @property
    def remote_output(self) -> bool:
        """Return True when the output folder is not on this machine's filesystem."""
        return "://" in self.output


def parse_config(data: dict[str, Any], *, source: str = "config") -> InferConfig:
    """Validate a config dict.

    Args:
        data: the keys and values, e.g. parsed YAML.
        source: where ``data`` came from, for messages.

    Returns:
        The validated config.

    Raises:
        ConfigError: naming every wrong or unknown key.
    """
    try:
        return InferConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {what}")
        raise ConfigError(
            f"{source} is not a valid inference config: {'; '.join(problems)}. "
            f"Valid keys: {', '.join(InferConfig.model_fields)}"
        ) from None


def load_config(path: str | os.PathLike[str], **overrides: Any) -> InferConfig:
    """Load a YAML job config, optionally overriding some keys.

    Relative ``region``, ``imagery`` and ``model`` paths are resolved against the YAML file's
    folder's parent when they exist there (so ``pipelines/local.yaml`` can say
    ``geo/sample/region.geojson``), else left as written.

    Args:
        path: the YAML file.
        **overrides: keys to replace after loading (None values are ignored).

    Returns:
        The validated config.

    Raises:
        ConfigError: if the file is not a YAML mapping or a key is wrong.
    """
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the config {file}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file} must hold a YAML mapping of keys to values")
    data.update({k: v for k, v in overrides.items() if v is not None})
    root = file.resolve().parent.parent
    for key in ("region", "imagery", "model"):
        value = data.get(key)
        if isinstance(value, str) and "://" not in value and not os.path.isabs(value):
            candidate = root / value
            if candidate.exists():
                data[key] = str(candidate)
    return parse_config(data, source=str(file))
