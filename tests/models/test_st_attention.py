"""Spatiotemporal attention cells: each operation mixes only along the axis it names."""

from __future__ import annotations

import pytest
import torch

from open_buildings.errors import ConfigError
from open_buildings.models.st_attention import ST_OPS, SpatioTemporalCell, check_st_cell

B, T, C, H, W = 1, 3, 8, 6, 6


def _cell(op: str) -> SpatioTemporalCell:
    torch.manual_seed(0)
    cell = SpatioTemporalCell([(op, 0)], C).eval()
    torch.nn.init.normal_(cell.project.weight)  # a trained cell's projection is not zero
    return cell


def _poke(cell: SpatioTemporalCell) -> torch.Tensor:
    """How much each output position moves when date 0's pixel (2, 2) changes."""
    x = torch.rand(B, T, C, H, W, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, 0, :, 2, 2] += 3.0
    with torch.no_grad():
        return (cell(y) - cell(x)).abs().amax(dim=(0, 2))  # (T, H, W)


@pytest.mark.parametrize("op", ["map_time", "dot_time"])
def test_time_attention_mixes_dates_at_a_pixel_and_nothing_else(op: str) -> None:
    moved = _poke(_cell(op))
    assert moved[1:, 2, 2].max() > 1e-4  # the other dates at that pixel heard of it
    moved[:, 2, 2] = 0
    assert moved.max() < 1e-6  # no other pixel did


@pytest.mark.parametrize("op", ["map_space", "dot_space"])
def test_space_attention_mixes_pixels_of_a_date_and_nothing_else(op: str) -> None:
    moved = _poke(_cell(op))
    assert moved[1:].max() < 1e-6  # no other date heard of it
    assert moved[0, 3, 3] > 1e-4  # a neighbouring pixel of the same date did


@pytest.mark.parametrize("op", ["map_spacetime", "dot_spacetime"])
def test_spacetime_attention_reaches_other_pixels_of_other_dates(op: str) -> None:
    assert _poke(_cell(op))[1, 3, 3] > 1e-4


def test_a_new_cell_is_the_identity_and_keeps_the_shape() -> None:
    cell = SpatioTemporalCell([("dot_time", 0), ("map_space", 1), ("dot_space", 0)], C).eval()
    x = torch.rand(2, T, C, H, W)
    with torch.no_grad():
        assert torch.equal(cell(x), x)
    assert cell.sinks == [2, 3]  # operation 1 feeds operation 2, so only 2 and 3 are summed


def test_every_op_runs_on_odd_sizes_and_two_dates() -> None:
    x = torch.rand(2, 2, C, 5, 3)
    for op in ST_OPS:
        with torch.no_grad():
            assert _cell(op)(x).shape == x.shape, op


def test_a_cell_that_reads_a_later_operation_or_an_unknown_op_is_refused() -> None:
    with pytest.raises(ConfigError, match="input 1 must be 0"):
        check_st_cell([("dot_time", 1)])
    with pytest.raises(ConfigError, match="unknown op 'conv3'"):
        check_st_cell([("conv3", 0)])
    with pytest.raises(ConfigError, match="at least one"):
        check_st_cell([])
