"""PNAS cells (Liu et al., 2018) as U-Net decoder blocks, for ``ob-search``.

A cell of B blocks takes two inputs: the decoder's upsampled feature map and the encoder's skip
connection, each projected to the block's channels by a 1x1 convolution. Block ``b`` computes
``op1(state[i1]) + op2(state[i2])`` over the two inputs and the earlier blocks' outputs; the
outputs no later block reads are concatenated and projected back to the block's channels. The
encoding is a tuple of ``(i1, op1, i2, op2)`` blocks, JSON-friendly, so a U-Net config carries it
(``UNetConfig.decoder_cell``) and a checkpoint rebuilds it like any other model.

smp's U-Net has no pluggable decoder block, so this module writes the block and swaps it into
``Unet.decoder.blocks`` (same ``forward`` signature as ``UnetDecoderBlock``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from open_buildings.errors import ConfigError

#: The op set: depthwise-separable 3x3 and 5x5, dilated 3x3 (rate 2), 3x3 max and average pool,
#: identity; every op keeps the channels and the size.
OPS = ("sep3", "sep5", "dil3", "max3", "avg3", "identity")
Block = tuple[int, str, int, str]


def check_cell(cell: Sequence[Sequence[object]]) -> tuple[Block, ...]:
    """Return ``cell`` as a tuple of ``(i1, op1, i2, op2)`` blocks, checked.

    Raises:
        ConfigError: an unknown op, or an input that is not one of the two cell inputs or an
            earlier block.
    """
    if not cell:
        raise ConfigError("decoder_cell needs at least one block [input, op, input, op]")
    out: list[Block] = []
    for b, block in enumerate(cell):
        if len(block) != 4:
            raise ConfigError(f"decoder_cell block {b} must be [input, op, input, op], got {block}")
        i1, op1, i2, op2 = block
        for i in (i1, i2):
            if not isinstance(i, int) or not 0 <= i < 2 + b:
                raise ConfigError(
                    f"decoder_cell block {b}: input {i!r} must be 0 or 1 (the cell's inputs) or "
                    f"an earlier block 2..{1 + b}"
                )
        for op in (op1, op2):
            if op not in OPS:
                raise ConfigError(f"decoder_cell block {b}: unknown op {op!r}; one of {OPS}")
        out.append((int(i1), str(op1), int(i2), str(op2)))
    return tuple(out)


def _conv_bn(c_in: int, c_out: int, k: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def make_op(name: str, channels: int) -> nn.Module:
    """One op of :data:`OPS` on ``channels`` channels (ReLU-free separable convs end in BN)."""
    if name in ("sep3", "sep5", "dil3"):
        k, dilation = (5, 1) if name == "sep5" else (3, 2 if name == "dil3" else 1)
        return nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(
                channels,
                channels,
                k,
                padding=dilation * (k // 2),
                dilation=dilation,
                groups=channels,
                bias=False,
            ),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
    if name == "max3":
        return nn.MaxPool2d(3, stride=1, padding=1)
    if name == "avg3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    if name == "identity":
        return nn.Identity()
    raise ConfigError(f"unknown op {name!r}; one of {OPS}")


class Cell(nn.Module):
    """A PNAS cell on two inputs of ``channels`` channels; see the module docstring."""

    def __init__(self, cell: Sequence[Sequence[object]], channels: int) -> None:
        super().__init__()
        self.cell = check_cell(cell)
        self.ops = nn.ModuleList(
            nn.ModuleList([make_op(op1, channels), make_op(op2, channels)])
            for _, op1, _, op2 in self.cell
        )
        used = {i for i1, _, i2, _ in self.cell for i in (i1, i2)}
        self.outputs = [2 + b for b in range(len(self.cell)) if 2 + b not in used]
        self.project = _conv_bn(channels * len(self.outputs), channels)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Combine the two inputs through the cell's blocks."""
        states = [x0, x1]
        for (i1, _, i2, _), (op1, op2) in zip(self.cell, self.ops):
            states.append(op1(states[i1]) + op2(states[i2]))
        return self.project(torch.cat([states[i] for i in self.outputs], dim=1))


class CellDecoderBlock(nn.Module):
    """A U-Net decoder block whose convolutions are a searched :class:`Cell`.

    The upsampled feature map and the skip connection are projected to ``out_channels`` (1x1
    convolution, BN, ReLU) and are the cell's two inputs; without a skip (the last block), both
    inputs are the upsampled map.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        cell: Sequence[Sequence[object]],
        interpolation_mode: str = "nearest",
    ) -> None:
        super().__init__()
        self.interpolation_mode = interpolation_mode
        self.up = _conv_bn(in_channels, out_channels)
        self.skip = _conv_bn(skip_channels, out_channels) if skip_channels else None
        self.cell = Cell(cell, out_channels)

    def forward(
        self,
        feature_map: torch.Tensor,
        target_height: int,
        target_width: int,
        skip_connection: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Upsample, project both inputs, run the cell (``UnetDecoderBlock``'s signature)."""
        x = functional.interpolate(
            feature_map, size=(target_height, target_width), mode=self.interpolation_mode
        )
        x0 = self.up(x)
        x1 = (
            self.skip(skip_connection)
            if self.skip is not None and skip_connection is not None
            else x0
        )
        return self.cell(x0, x1)


def swap_decoder_blocks(
    unet: nn.Module, cell: Sequence[Sequence[object]], interpolation_mode: str = "nearest"
) -> None:
    """Replace every block of an smp ``Unet``'s decoder with a :class:`CellDecoderBlock`."""
    for i, old in enumerate(unet.decoder.blocks):
        conv = old.conv1[0]  # Conv2dReLU: conv, norm, activation
        out_channels = conv.out_channels
        skip_channels = _skip_channels(unet, i)
        in_channels = conv.in_channels - skip_channels
        unet.decoder.blocks[i] = CellDecoderBlock(
            in_channels, skip_channels, out_channels, cell, interpolation_mode
        )


def _skip_channels(unet: nn.Module, index: int) -> int:
    channels = list(unet.encoder.out_channels)[1:][::-1][1:]  # as UnetDecoder computes them
    return channels[index] if index < len(channels) else 0
