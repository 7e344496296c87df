"""``ob-search``'s space of PNAS cells: enumerate, expand, sample, encode.

A cell is a tuple of blocks ``(i1, op1, i2, op2)`` (:mod:`open_buildings.models.search_cell`).
``op1(x) + op2(y)`` is symmetric, so a block is stored with its two ``(input, op)`` halves in
sorted order and two cells that differ only in that order are one cell.
"""

from __future__ import annotations

import itertools
import json

import numpy as np

from open_buildings.models.search_cell import OPS, Block

Cell = tuple[Block, ...]


def canonical_block(i1: int, op1: str, i2: int, op2: str) -> Block:
    """The block with its two halves in sorted order."""
    a, b = sorted([(i1, op1), (i2, op2)])
    return (a[0], a[1], b[0], b[1])


def block_choices(index: int, ops: tuple[str, ...] = OPS) -> list[Block]:
    """Every distinct block at position ``index`` (inputs: the two cell inputs and the
    ``index`` earlier blocks)."""
    halves = [(i, op) for i in range(2 + index) for op in ops]
    return [canonical_block(*a, *b) for a, b in itertools.combinations_with_replacement(halves, 2)]


def level_one(ops: tuple[str, ...] = OPS) -> list[Cell]:
    """All one-block cells: PNAS trains every one of them first."""
    return [(block,) for block in block_choices(0, ops)]


def expand(cell: Cell, ops: tuple[str, ...] = OPS) -> list[Cell]:
    """Every child of ``cell``: the cell with one more block appended."""
    return [(*cell, block) for block in block_choices(len(cell), ops)]


def random_cell(rng: np.random.Generator, blocks: int, ops: tuple[str, ...] = OPS) -> Cell:
    """A uniformly drawn cell of ``blocks`` blocks (each block uniform over its choices)."""
    cell: list[Block] = []
    for b in range(blocks):
        choices = block_choices(b, ops)
        cell.append(choices[int(rng.integers(len(choices)))])
    return tuple(cell)


def features(cell: Cell, max_blocks: int, ops: tuple[str, ...] = OPS) -> np.ndarray:
    """The surrogate's input: the share of the cell's ``(input, op)`` halves of each kind
    (input: cell input 0, cell input 1, an earlier block; times each op), whether any half reads
    cell input 1 (the skip connection), and the number of blocks. Averaging over the blocks (as
    PNAS's MLP averages block embeddings) lets a surrogate fitted on smaller cells score a larger
    one.

    The pairs matter: the first one-hour search (bench/search.md) counted inputs and ops
    separately, which scored most children of a parent alike (rank correlation 0.12 at level 2,
    undefined at level 3); on the same trained cells these features rank at 0.55 and 0.78
    (``pipelines/search/surrogate_check.py``).
    """
    out = np.zeros(3 * len(ops) + 2, dtype=np.float32)
    for i1, op1, i2, op2 in cell:
        for i, op in ((i1, op1), (i2, op2)):
            out[min(i, 2) * len(ops) + ops.index(op)] += 1.0 / (2 * len(cell))
    out[-2] = float(any(1 in (b[0], b[2]) for b in cell))
    out[-1] = len(cell) / max_blocks
    return out


def to_text(cell: Cell) -> str:
    """The cell as compact JSON (history.csv's ``cell`` column)."""
    return json.dumps([list(b) for b in cell], separators=(",", ":"))


def from_text(text: str) -> Cell:
    """Inverse of :func:`to_text`."""
    return tuple(canonical_block(*b) for b in json.loads(text))
