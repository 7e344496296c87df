"""The inference job's typed configuration, loaded from YAML (``pipelines/*.yaml``).

Every key is checked: an unknown or misspelt key is a :class:`~open_buildings.errors.ConfigError`
that names it, never a silent default. The same :class:`InferConfig` drives ``ob-infer`` on a
laptop and a Dataflow job over a continent; only :attr:`InferConfig.runner` and
:attr:`InferConfig.dataflow` differ. The settings of each stage are a frozen sub-config
(:class:`GridConfig`, :class:`PostprocessConfig`, :class:`RuntimeConfig`) that is passed whole to
the stage that uses it. Load a file with ``open_buildings.config.load_config(InferConfig, path)``;
relative paths in it are resolved against its folder.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from open_buildings.config import BASE_DIR, ConfigPath, StrictModel, resolve_path
from open_buildings.geo.grid import GridSpec

Format = Literal["csv", "parquet"]
#: ``min_confidence`` value that means "the model's own best-F1 operating point".
AUTO = "auto"


def _resolve_model(value: str, info: ValidationInfo) -> str:
    if "/" in value or value.endswith(".safetensors"):  # a path, not a zoo name
        return resolve_path(value, (info.context or {}).get(BASE_DIR)) or value
    return value


#: A zoo name (``default``) or a path to a checkpoint, resolved like any config path.
ModelSpec = Annotated[str, AfterValidator(_resolve_model)]


class GridConfig(StrictModel):
    """The tiling grid.

    Attributes:
        tile_level: S2 level of the tile cores.
        margin_m: how far beyond its core each tile is read, in metres.
    """

    tile_level: int = Field(default=14, ge=10, le=18)
    margin_m: float = Field(default=32.0, ge=0.0)

    @property
    def spec(self) -> GridSpec:
        """The grid as ``geo.grid`` takes it."""
        return GridSpec(level=self.tile_level, margin_m=self.margin_m)


class PostprocessConfig(StrictModel):
    """From a tile's logits to the footprints written.

    Attributes:
        min_confidence: drop buildings whose confidence is below this; ``"auto"`` (the default)
            takes the model's best-F1 operating point from its checkpoint (0 when it carries
            none, with a warning). The job resolves it to a number before any worker starts.
        simplify_m: polygon simplification tolerance in metres.
        min_area_m2: drop buildings smaller than this.
        keep_whole_tiles: write every building of every tile touching the region; by default a
            building is written only if its centroid lies inside the region.
    """

    min_confidence: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] = AUTO
    simplify_m: float = Field(default=0.5, ge=0.0)
    min_area_m2: float = Field(default=1.0, ge=0.0)
    keep_whole_tiles: bool = False

    @property
    def threshold(self) -> float:
        """The confidence floor as a number (``"auto"`` must have been resolved first)."""
        if isinstance(self.min_confidence, str):
            raise ValueError("min_confidence 'auto' was not resolved against the model")
        return float(self.min_confidence)


class RuntimeConfig(StrictModel):
    """How a worker runs the model.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``; ``"cuda"`` fails loudly on a worker without a GPU.
        bf16: run the model under bfloat16 autocast.
        min_batch_size: the smallest batch RunInference forms.
        max_batch_size: the largest batch RunInference forms.
        share_model_across_processes: one model per machine instead of one per process.
        backend: how a CPU worker runs the model: ``"auto"`` (a shipped ONNX export in OpenVINO
            bf16 where the CPU has native bf16, else in ONNX Runtime fp32; ONNX Runtime when the
            model converts; else PyTorch in channels_last), ``"torch"``, ``"onnxruntime"`` or
            ``"openvino-bf16"``; or ``"onnxruntime-int8"``, the int8 export written by
            ``ob-models quantize-int8`` (an option, never the default).
        tta: test-time augmentation (``runtime.run_model``): probabilities averaged over the 8
            flips and quarter turns of each tile, at 8x the model's compute.
        decode: where logits become instances: ``"host"`` (scikit-image on the CPU),
            ``"device"`` (PyTorch where the model runs, ``pipelines.device_decode``; the model must
            run in PyTorch) or ``"auto"`` (the device on a GPU, unless ``tta`` or probability
            rasters need the logits on the host).
    """

    device: Literal["cpu", "cuda"] = "cpu"
    bf16: bool = False
    min_batch_size: int = Field(default=1, ge=1)
    max_batch_size: int = Field(default=4, ge=1)
    share_model_across_processes: bool = False
    backend: Literal["auto", "torch", "onnxruntime", "openvino-bf16", "onnxruntime-int8"] = "auto"
    tta: bool = False
    decode: Literal["auto", "host", "device"] = "auto"

    @model_validator(mode="after")
    def _batches(self) -> RuntimeConfig:
        if self.min_batch_size > self.max_batch_size:
            raise ValueError(
                f"min_batch_size ({self.min_batch_size}) exceeds max_batch_size "
                f"({self.max_batch_size})"
            )
        return self


class DataflowConfig(StrictModel):
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
        sdk_process_per_vcpu: run one Python process per vCPU (Dataflow's default) instead of
            one per worker, so reading, decoding and polygonizing use every core; on GPU workers
            it needs ``runtime.share_model_across_processes`` (one model on the GPU, served to
            all of them). The arithmetic that sizes the worker is in ``deploy/README.md``.
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
    sdk_process_per_vcpu: bool = False

    @field_validator("temp_location", "staging_location")
    @classmethod
    def _gcs(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("gs://"):
            raise ValueError(f"must be a gs:// path, got {value!r}")
        return value


class InferConfig(StrictModel):
    """One inference job: from a region and imagery to sharded footprint files.

    Attributes:
        region: the region GeoJSON (local path or ``gs://``); None means the embedded sample.
        imagery: the imagery source (GeoTIFF/COG files, a folder, an XYZ template, a STAC JSON);
            None means the embedded sample.
        bands: which 1-based bands of the imagery are red, green and blue (e.g. ``(1, 1, 1)``
            for a grey image); None maps them from the files' colour interpretation.
        model: a zoo name (``models/<name>/``) or a path to a ``.safetensors`` checkpoint.
        model_sha256: the checkpoint's expected sha256; None computes it at launch (local files)
            or reads the ``.sha256`` sidecar (remote files).
        moe_capacity: the eval capacity factor of a V-MoE model's expert layers (lower runs
            fewer expert FLOPs and drops the least confident tokens first); None keeps the
            checkpoint's. An error for a model without expert layers.
        output: the output folder (local or ``gs://``).
        formats: which files to write per shard.
        write_probabilities: also write each tile's model probabilities as a COG under
            ``output/probabilities/`` (``pipelines.probabilities``): a teacher's soft targets
            for ``ob-train``'s self-training, or a map to inspect.
        shard_level: S2 level of the output shards (Open Buildings v3 used level 4 files; 6 keeps
            an African shard at a few hundred MB).
        grid: the tiling grid.
        postprocess: confidence floor, simplification, minimum area.
        runtime: device, bf16, batching, backend.
        runner: ``"direct"`` (this machine) or ``"dataflow"``.
        workers: local worker processes (1 runs in memory).
        threads: with one worker, how many tiles it works on at once, in threads of one process
            that share the model: one tile is read or polygonized while another is in the model
            (1.21x faster on 2 cores, ``bench/README.md``). None: 2 with one worker, else 1.
        max_region_km2: refuse regions larger than this.
        fix_invalid: repair self-intersecting region polygons instead of failing.
        dataflow: where a Dataflow job runs; required when ``runner`` is ``"dataflow"``.
    """

    region: ConfigPath | None = None
    imagery: ConfigPath | None = None
    bands: tuple[int, int, int] | None = None
    model: ModelSpec = "default"
    model_sha256: str | None = None
    moe_capacity: float | None = Field(default=None, gt=0.0)
    output: ConfigPath
    formats: tuple[Format, ...] = ("csv", "parquet")
    write_probabilities: bool = False
    shard_level: int = Field(default=6, ge=0, le=14)
    grid: GridConfig = GridConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    runner: Literal["direct", "dataflow"] = "direct"
    workers: int = Field(default=1, ge=1)
    threads: int | None = Field(default=None, ge=1)
    max_region_km2: float = Field(default=1_000_000.0, gt=0.0)
    fix_invalid: bool = False
    dataflow: DataflowConfig | None = None

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("give at least one format: csv, parquet")
        return tuple(dict.fromkeys(value))

    @property
    def local_threads(self) -> int:
        """The threads a local run uses: ``threads``, or 2 with one worker and 1 with several."""
        if self.threads is not None:
            return self.threads
        return 2 if self.workers == 1 else 1

    @model_validator(mode="after")
    def _consistent(self) -> InferConfig:
        if self.shard_level > self.grid.tile_level:
            raise ValueError(
                f"shard_level ({self.shard_level}) must not be finer than grid.tile_level "
                f"({self.grid.tile_level}): a shard is a union of whole tiles"
            )
        if self.runner == "dataflow" and self.dataflow is None:
            raise ValueError("runner 'dataflow' needs a 'dataflow:' section")
        if self.runtime.decode == "device" and (self.write_probabilities or self.runtime.tta):
            raise ValueError(
                "runtime.decode 'device' hands the host instances, not logits, so it cannot "
                "write_probabilities or average tta on the host; use runtime.decode 'auto'"
            )
        if self.runtime.decode == "device" and self.runtime.device == "cpu":
            if self.runtime.backend != "torch":
                raise ValueError(
                    "runtime.decode 'device' decodes in PyTorch where the model runs; on a CPU "
                    "that needs runtime.backend 'torch' (--backend torch)"
                )
        if self.workers > 1 and (self.threads or 1) > 1:
            raise ValueError(
                f"workers ({self.workers}) and threads ({self.threads}): choose one, worker "
                "processes (each with its own model) or threads of one process (sharing it)"
            )
        df = self.dataflow
        if (
            self.runner == "dataflow"
            and df is not None
            and df.sdk_process_per_vcpu
            and df.gpu_count
            and not self.runtime.share_model_across_processes
        ):
            raise ValueError(
                "dataflow.sdk_process_per_vcpu on a GPU worker loads one model per vCPU onto the "
                "GPU; set runtime.share_model_across_processes: true so that one serves them all"
            )
        return self
