"""A two-date U-Net for building change: the shared single-date encoder, a spatiotemporal
attention cell (:mod:`.st_attention`) mixing the dates' features at chosen encoder levels, the
shared decoder per date, and two kinds of heads: building presence per date and change.

Input: the two dates' RGB stacked on the channel axis, ``(B, 6, H, W)`` (before, then after), so
it keeps the one :class:`BuildingModel` contract (normalise, pad, crop) and sits in the shared
model suite. Output: ``building_before``, ``building_after`` and ``change`` logits.

Registered models (random weights; ``init_from: imagenet`` loads the Lite encoder):

- ``change_unet_lite0``: no attention (the dates meet only at the change head);
- ``change_unet_lite0_nonlocal``: a non-local block at the deepest level;
- ``change_unet_lite0_st``: the spatiotemporal cell that ``pipelines/change/search.py`` found
  (:data:`SEARCHED_CELL`, at strides 16 and 32; ``bench/change.md``); set ``cell`` for another.

``ob-train pipelines/change/train.yaml`` trains them on pairs made from single-date labels
(:mod:`open_buildings.training.change_pairs`); ``pipelines/change/search.py`` searches the cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import segmentation_models_pytorch as smp
import torch
from torch import nn

from open_buildings.errors import ConfigError
from open_buildings.models.base import BuildingModel
from open_buildings.models.input_spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from open_buildings.models.lite_imagenet import load_lite_imagenet
from open_buildings.models.registry import PACKAGED_WEIGHTS, register_family
from open_buildings.models.st_attention import NON_LOCAL, SpatioTemporalCell, check_st_cell

__all__ = ["CHANGE_CHANNELS", "ChangeUNet", "ChangeUNetConfig"]

DATES = 2
CHANGE_CHANNELS = ("building_before", "building_after", "change")


@dataclass(frozen=True)
class ChangeUNetConfig:
    """A two-date change U-Net's architecture.

    Attributes:
        encoder_name: smp encoder name (the Lite ones take ``init_from: imagenet``).
        decoder_channels: channels of each decoder stage (five).
        cell: the spatiotemporal cell, ``[[op, input], ...]``; None: no attention.
        cell_levels: encoder feature levels that get a cell (1 = stride 2 ... 5 = stride 32).
    """

    encoder_name: str = "tu-efficientnet_lite0"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    cell: tuple[tuple[str, int], ...] | None = None
    cell_levels: tuple[int, ...] = (5,)


class ChangeUNet(nn.Module):
    """The two-date network; see the module docstring."""

    def __init__(self, config: ChangeUNetConfig) -> None:
        super().__init__()
        unet = smp.Unet(
            encoder_name=config.encoder_name,
            encoder_weights=None,
            decoder_channels=tuple(config.decoder_channels),
            in_channels=3,
            classes=1,
        )
        self.encoder, self.decoder, self.building_head = (
            unet.encoder,
            unet.decoder,
            unet.segmentation_head,
        )
        channels = list(self.encoder.out_channels)
        self.cells = nn.ModuleDict()
        if config.cell is not None:
            cell = check_st_cell(config.cell)
            for level in config.cell_levels:
                if not 1 <= level < len(channels):
                    raise ConfigError(
                        f"cell_levels holds {level}; encoder levels are 1..{len(channels) - 1}"
                    )
                self.cells[str(level)] = SpatioTemporalCell(cell, channels[level])
        last = config.decoder_channels[-1]
        self.change_head = nn.Sequential(
            nn.Conv2d(3 * last, last, 3, padding=1),
            nn.BatchNorm2d(last),
            nn.ReLU(inplace=True),
            nn.Conv2d(last, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 6, H, W)`` normalised -> ``(B, 3, H, W)`` logits."""
        b, _, h, w = x.shape
        features = self.encoder(x.reshape(b * DATES, 3, h, w))
        for level, cell in self.cells.items():
            f = features[int(level)]
            features[int(level)] = cell(f.reshape(b, DATES, *f.shape[1:])).reshape(f.shape)
        decoded = self.decoder(features)
        building = self.building_head(decoded).reshape(b, DATES, h, w)
        d = decoded.reshape(b, DATES, *decoded.shape[1:])
        change = self.change_head(torch.cat([d[:, 0], d[:, 1], d[:, 1] - d[:, 0]], dim=1))
        return torch.cat([building, change], dim=1)


def build_change_unet(config: ChangeUNetConfig) -> nn.Module:
    """Build the network with random weights (see :class:`ChangeUNetConfig`)."""
    return ChangeUNet(config)


def _load_pretrained(model: BuildingModel, source: str) -> dict[str, int]:
    return load_lite_imagenet(model, None if source == PACKAGED_WEIGHTS else source)


#: The best of 12 random cells on the change task (held-out pairs' change F1 after 120 steps;
#: ``bench/results/change_search.csv``): two space attentions in a row and a space-time one.
SEARCHED_CELL = (("dot_space", 0), ("dot_space", 1), ("dot_spacetime", 0))

_SPEC = InputSpec(bands=3 * DATES, mean=IMAGENET_MEAN * DATES, std=IMAGENET_STD * DATES)
_LITE0 = "tu-efficientnet_lite0"

register_family(
    [
        (
            "change_unet_lite0",
            ChangeUNetConfig(encoder_name=_LITE0),
            "two-date change U-Net, Lite0 encoder, no attention",
        ),
        (
            "change_unet_lite0_nonlocal",
            ChangeUNetConfig(encoder_name=_LITE0, cell=NON_LOCAL),
            "two-date change U-Net, Lite0 encoder, a non-local block at stride 32",
        ),
        (
            "change_unet_lite0_st",
            ChangeUNetConfig(encoder_name=_LITE0, cell=SEARCHED_CELL, cell_levels=(4, 5)),
            "two-date change U-Net, Lite0 encoder, the searched spatiotemporal cell at strides "
            "16 and 32",
        ),
    ],
    build_change_unet,
    input_spec=_SPEC,
    output_channels=CHANGE_CHANNELS,
    load_pretrained=_load_pretrained,
)
