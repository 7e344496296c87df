"""V-MoE: a ViT whose MLPs are sparse mixtures of experts (Riquelme et al. 2021), with the dense
decoder of :mod:`open_buildings.models.vit`.

The encoder is :class:`~open_buildings.models.vit.ViTEncoder` (SigLIP variant) with the MLP of
some blocks replaced by a :class:`~open_buildings.models.moe.MoEMlp`:

- ``moe_placement="every_other"``: blocks 1, 3, 5, ... (V-MoE's "Every 2");
- ``moe_placement="last_n"``: the last ``moe_last_n`` of those (V-MoE's "Last n").

Routing groups are single images by default (``group_size=1``), so a tile's footprints never
depend on which tiles it was batched with (the inference pipeline relies on that). The eval
capacity factor is the test-time knob: :func:`~open_buildings.models.moe.set_capacity`, or
``ob-infer --moe-capacity``.

Registered models (random weights):

- ``vmoe_s16``: ViT-S/16 shape (width 384, depth 12, 6 heads), E=8 experts, k=2, every other
  block.
- ``vmoe_tiny``: width 64, depth 4, E=4, k=2, every other block: tests and smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from open_buildings.errors import ConfigError
from open_buildings.models.dense_decoder import DenseDecoder
from open_buildings.models.heads import CHANNELS
from open_buildings.models.moe import DISPATCH_MODES, MoEMlp, moe_layers, set_capacity
from open_buildings.models.moe_compute import ExpertCompute, measure_expert_compute
from open_buildings.models.registry import register_family
from open_buildings.models.vit import (
    ViTConfig,
    ViTEncoder,
    ViTSegmenter,
    activation,
    siglip_input_spec,
)

__all__ = [
    "PLACEMENTS",
    "ExpertCompute",
    "VMoEConfig",
    "VMoEEncoder",
    "build_vmoe_segmenter",
    "measure_expert_compute",
    "moe_blocks",
    "moe_layers",
    "set_capacity",
]

PLACEMENTS = ("every_other", "last_n")


@dataclass(frozen=True)
class VMoEConfig(ViTConfig):
    """A V-MoE encoder and its dense decoder: :class:`ViTConfig` plus the MoE fields.

    Attributes:
        num_experts: Experts per MoE layer (``E``).
        k: Experts each token is routed to.
        moe_placement: ``"every_other"`` (blocks 1, 3, 5, ...) or ``"last_n"``.
        moe_last_n: With ``"last_n"``, how many of the every-other blocks, counted from the end.
        capacity_factor_train: Expert capacity factor in training.
        capacity_factor_eval: Expert capacity factor at inference (the test-time knob).
        noise_std: Gate noise standard deviation in training; ``None`` means ``1 / num_experts``.
        group_size: Images per routing group (1: routing never mixes images).
        importance_weight: Weight of the importance loss.
        load_weight: Weight of the load loss.
        batch_priority: Batch Prioritized Routing (drop the least confident tokens first).
        dispatch: ``"index"`` (gather by index) or ``"einsum"`` (dense one-hot einsums).
    """

    num_experts: int = 8
    k: int = 2
    moe_placement: str = "every_other"
    moe_last_n: int = 2
    capacity_factor_train: float = 1.05
    capacity_factor_eval: float = 1.05
    noise_std: float | None = None
    group_size: int = 1
    importance_weight: float = 0.005
    load_weight: float = 0.005
    batch_priority: bool = True
    dispatch: str = "index"


def moe_blocks(config: VMoEConfig) -> tuple[int, ...]:
    """Return the 0-based indices of the blocks whose MLP is a mixture of experts.

    Args:
        config: The V-MoE config.

    Returns:
        Increasing block indices (as V-MoE's ``Every 2`` / ``Last n`` layouts).

    Raises:
        ConfigError: Unknown placement, or ``moe_last_n`` outside ``1 ..`` the odd blocks.
    """
    odd = tuple(range(1, config.depth, 2))
    if config.moe_placement == "every_other":
        return odd
    if config.moe_placement == "last_n":
        if not 1 <= config.moe_last_n <= len(odd):
            raise ConfigError(
                f"moe_last_n must be between 1 and {len(odd)} (the every-other blocks of a depth "
                f"of {config.depth}), got {config.moe_last_n}"
            )
        return odd[-config.moe_last_n :]
    raise ConfigError(
        f"moe_placement must be one of {', '.join(PLACEMENTS)}, got {config.moe_placement!r}"
    )


class VMoEEncoder(ViTEncoder):
    """A :class:`ViTEncoder` whose :func:`moe_blocks` have :class:`MoEMlp` MLPs.

    Args:
        config: The architecture.
        in_chans: Input bands.
    """

    def __init__(self, config: VMoEConfig, in_chans: int = 3) -> None:
        if config.dispatch not in DISPATCH_MODES:
            raise ConfigError(f"dispatch must be one of {DISPATCH_MODES}, got {config.dispatch!r}")
        blocks = moe_blocks(config)
        if not blocks:
            raise ConfigError(
                f"a depth of {config.depth} has no every-other block for an MoE layer; use "
                "depth >= 2"
            )
        super().__init__(config, in_chans)
        for index in blocks:
            self.blocks[index].mlp = MoEMlp(
                config.width,
                config.mlp_dim,
                config.num_experts,
                config.k,
                capacity_factor_train=config.capacity_factor_train,
                capacity_factor_eval=config.capacity_factor_eval,
                noise_std=config.noise_std,
                group_size=config.group_size,
                importance_weight=config.importance_weight,
                load_weight=config.load_weight,
                batch_priority=config.batch_priority,
                activation=activation(config.act),
                dispatch=config.dispatch,
            )


def build_vmoe_segmenter(config: VMoEConfig) -> ViTSegmenter:
    """Build a V-MoE encoder with the dense decoder and the instance heads.

    Args:
        config: The architecture.

    Returns:
        The network (expects normalised input with sides divisible by ``config.patch``).
    """
    encoder = VMoEEncoder(config)
    decoder = DenseDecoder(config.width, config.decoder_channels, config.detail_channels)
    return ViTSegmenter(encoder, decoder)


VMOE_S16 = VMoEConfig(
    width=384, depth=12, mlp_dim=1536, heads=6, patch=16, pretrain_size=224, num_experts=8, k=2
)
VMOE_TINY = VMoEConfig(
    width=64,
    depth=4,
    mlp_dim=128,
    heads=4,
    patch=16,
    pretrain_size=64,
    decoder_channels=32,
    detail_channels=8,
    num_experts=4,
    k=2,
)

_MODELS = [
    ("vmoe_s16", VMOE_S16, "V-MoE ViT-S/16, 8 experts, top-2, every other block + DPT decoder"),
    ("vmoe_tiny", VMOE_TINY, "V-MoE, width 64, depth 4, 4 experts, top-2: tests and smoke runs"),
]


def _load_pretrained(model: nn.Module, source: str) -> dict[str, int]:
    """An official V-MoE checkpoint (``models.convert.vmoe.load_vmoe``)."""
    from open_buildings.models.convert.vmoe import load_vmoe

    return load_vmoe(model, source)


register_family(
    _MODELS,
    build_vmoe_segmenter,
    input_spec=siglip_input_spec,
    output_channels=CHANNELS,
    load_pretrained=_load_pretrained,
)
