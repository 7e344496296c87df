"""The training config (``ob-train CONFIG.yaml``): typed, and unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from open_buildings.config import StrictModel


class AreaConfig(StrictModel):
    """An area of imagery, with building labels or without.

    Relative paths are resolved against the config's ``data_root``.
    """

    name: str
    imagery: str
    labels: str | None = None
    bands: tuple[int, int, int] | None = None
    scale: tuple[float, float] | None = None


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


class SelfTrainingConfig(StrictModel):
    """Self-training with a teacher's soft targets on unlabelled imagery.

    ``ratio`` unlabelled chips are added per labelled chip; their loss is
    ``weight * T² * KL(teacher_T ‖ student_T)``.
    """

    enabled: bool = False
    teacher: str | None = None
    unlabelled: list[AreaConfig] = []
    ratio: float = Field(0.5, ge=0.0)
    temperature: float = Field(2.0, gt=0.0)
    weight: float = Field(1.0, ge=0.0)


class TrainConfig(StrictModel):
    """Everything one training run needs; ``ob-train`` saves it next to the weights."""

    model: str = "unet_efficientnet_lite0"
    model_overrides: dict[str, Any] = {}
    init: Literal["random", "imagenet"] = "random"
    #: A local official backbone checkpoint (SigLIP/PaliGemma, OWL-ViT, V-MoE) loaded into the
    #: model's encoder by ``models.pretrained.load_backbone`` after ``init``.
    init_from: str | None = None
    data_root: str = "../shared/data"
    train: list[AreaConfig]
    val: list[AreaConfig] = []
    grid_level: int = Field(14, ge=10, le=18)
    chip: ChipConfig = ChipConfig()
    batch_size: int = Field(8, ge=1)
    steps: int = Field(1000, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(50, ge=0)
    dice_weight: float = Field(1.0, ge=0.0)
    mixup: MixupConfig = MixupConfig()
    self_training: SelfTrainingConfig = SelfTrainingConfig()
    val_every: int = Field(200, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    bf16: bool = True
    threads: int | None = None
    out: str = "runs/train"

    def resolve(self, path: str | None) -> str | None:
        """Resolve a data path against ``data_root`` (absolute paths and URLs pass through)."""
        if path is None or "://" in path or Path(path).is_absolute():
            return path
        return str(Path(self.data_root) / path)
