"""Spatiotemporal attention cells (Wang et al., ECCV 2020) over per-date feature maps.

A cell takes the features of every date, ``(B, T, C, H, W)``, from the shared single-date
encoder and mixes them. Each of its operations chooses

- what it attends over: ``space`` (the pixels of one date), ``time`` (the dates at one pixel) or
  ``spacetime`` (every pixel of every date);
- how: ``map`` (a sigmoid gate computed from the features, as in CBAM) or ``dot`` (dot-product
  attention, as in non-local blocks);
- where its input comes from: the cell's input (0) or an earlier operation (1, 2, ...).

The operations whose output no later operation reads are summed at the sink, projected by a 1x1
convolution and added to the input (residual), so a cell keeps the input's shape and can sit at
any encoder level. The projection starts at zero: a new cell is the identity until trained.

The encoding is a tuple of ``(op, input)`` pairs, e.g. ``(("dot_time", 0), ("map_space", 1))``;
a non-local block is ``(("dot_spacetime", 0),)``.

No library offers these operations over a time axis of feature maps (timm's attention blocks work
on token sequences of one image), so they are written here, each a few lines of torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from open_buildings.errors import ConfigError

AXES = ("space", "time", "spacetime")
KINDS = ("map", "dot")
#: Every operation: ``<kind>_<axis>``.
ST_OPS = tuple(f"{kind}_{axis}" for kind in KINDS for axis in AXES)
StCell = tuple[tuple[str, int], ...]
#: The non-local block (Wang et al., 2018) as a one-operation cell.
NON_LOCAL: StCell = (("dot_spacetime", 0),)


def check_st_cell(cell: Sequence[Sequence[object]]) -> StCell:
    """Return ``cell`` as a tuple of ``(op, input)`` pairs, checked.

    Raises:
        ConfigError: an unknown op, or an input that is not the cell's (0) or an earlier op's.
    """
    if not cell:
        raise ConfigError("a spatiotemporal cell needs at least one [op, input] pair")
    out = []
    for k, pair in enumerate(cell):
        if len(pair) != 2:
            raise ConfigError(f"cell operation {k} must be [op, input], got {pair}")
        op, source = pair
        if op not in ST_OPS:
            raise ConfigError(f"cell operation {k}: unknown op {op!r}; one of {ST_OPS}")
        if not isinstance(source, int) or not 0 <= source <= k:
            raise ConfigError(
                f"cell operation {k}: input {source!r} must be 0 (the cell's input) or an "
                f"earlier operation 1..{k}"
            )
        out.append((str(op), int(source)))
    return tuple(out)


class MapAttention(nn.Module):
    """A sigmoid gate over one axis, computed from channel statistics (CBAM's spatial gate).

    ``space``: a 7x7 convolution over each date's mean and max over channels; ``time``: a
    convolution over the dates at each pixel (kernel 3 in time); ``spacetime``: a 3x3x3 one.
    """

    def __init__(self, axis: str) -> None:
        super().__init__()
        kernel = {"space": (1, 7, 7), "time": (3, 1, 1), "spacetime": (3, 3, 3)}[axis]
        self.conv = nn.Conv3d(2, 1, kernel, padding=tuple(k // 2 for k in kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``x`` ``(B, T, C, H, W)``."""
        stats = torch.stack([x.mean(dim=2), x.amax(dim=2)], dim=1)  # (B, 2, T, H, W)
        gate = torch.sigmoid(self.conv(stats)).permute(0, 2, 1, 3, 4)  # (B, T, 1, H, W)
        return x * gate


class DotAttention(nn.Module):
    """Dot-product attention (a non-local block's) over one axis, keys and values pooled 2x in
    space where the axis includes space (as the non-local paper subsamples them)."""

    def __init__(self, axis: str, channels: int) -> None:
        super().__init__()
        self.axis = axis
        inner = max(channels // 2, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        self.scale = inner**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend within ``x`` ``(B, T, C, H, W)`` along the op's axis."""
        b, t, c, h, w = x.shape
        flat = x.reshape(b * t, c, h, w)
        q, k, v = self.query(flat), self.key(flat), self.value(flat)
        if self.axis != "time" and min(h, w) >= 2:
            k, v = functional.max_pool2d(k, 2), functional.max_pool2d(v, 2)
        d = q.shape[1]
        if self.axis == "space":  # each date's pixels attend to that date's pixels
            qs = q.reshape(b * t, d, h * w).transpose(1, 2)
            ks, vs = k.reshape(b * t, d, -1), v.reshape(b * t, d, -1).transpose(1, 2)
            mixed = torch.softmax(qs @ ks * self.scale, dim=-1) @ vs  # (BT, HW, d)
            mixed = mixed.transpose(1, 2).reshape(b * t, d, h, w)
        elif self.axis == "time":  # each pixel attends to itself at every date
            qs = q.reshape(b, t, d, h * w).permute(0, 3, 1, 2)  # (B, HW, T, d)
            ks = k.reshape(b, t, d, h * w).permute(0, 3, 2, 1)  # (B, HW, d, T)
            vs = v.reshape(b, t, d, h * w).permute(0, 3, 1, 2)
            mixed = torch.softmax(qs @ ks * self.scale, dim=-1) @ vs  # (B, HW, T, d)
            mixed = mixed.permute(0, 2, 3, 1).reshape(b * t, d, h, w)
        else:  # every pixel of every date attends to every (pooled) pixel of every date
            qs = q.reshape(b, t, d, h * w).permute(0, 1, 3, 2).reshape(b, t * h * w, d)
            n = k.shape[-2] * k.shape[-1]
            ks = k.reshape(b, t, d, n).permute(0, 2, 1, 3).reshape(b, d, t * n)
            vs = v.reshape(b, t, d, n).permute(0, 1, 3, 2).reshape(b, t * n, d)
            mixed = torch.softmax(qs @ ks * self.scale, dim=-1) @ vs  # (B, THW, d)
            mixed = mixed.reshape(b, t, h * w, d).permute(0, 1, 3, 2).reshape(b * t, d, h, w)
        return self.out(mixed).reshape(b, t, c, h, w)


def make_st_op(name: str, channels: int) -> nn.Module:
    """One operation of :data:`ST_OPS` on ``channels`` channels."""
    kind, _, axis = name.partition("_")
    if kind == "map" and axis in AXES:
        return MapAttention(axis)
    if kind == "dot" and axis in AXES:
        return DotAttention(axis, channels)
    raise ConfigError(f"unknown spatiotemporal op {name!r}; one of {ST_OPS}")


class SpatioTemporalCell(nn.Module):
    """A searched cell over ``(B, T, C, H, W)``; see the module docstring."""

    def __init__(self, cell: Sequence[Sequence[object]], channels: int) -> None:
        super().__init__()
        self.cell = check_st_cell(cell)
        self.ops = nn.ModuleList(make_st_op(op, channels) for op, _ in self.cell)
        used = {source for _, source in self.cell}
        self.sinks = [k + 1 for k in range(len(self.cell)) if k + 1 not in used]
        self.project = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix the dates' features; the output has the input's shape."""
        states = [x]
        for (_, source), op in zip(self.cell, self.ops):
            states.append(op(states[source]))
        sink = torch.stack([states[k] for k in self.sinks]).sum(dim=0)
        b, t, c, h, w = sink.shape
        return x + self.project(sink.reshape(b * t, c, h, w)).reshape(b, t, c, h, w)
