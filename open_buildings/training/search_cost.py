"""``ob-search``'s cost: milliseconds per tile of each candidate in ``ob-infer``'s runtime here.

Each candidate (random weights time like trained ones) is exported to ONNX as ``ob-models
export-onnx`` exports, and opened in the runtime ``ob-infer --backend auto`` picks on this CPU
(``pipelines.runtime.export_runtime``: OpenVINO bf16 where the CPU has native bf16, ONNX Runtime
fp32 elsewhere). Candidates are timed in groups held open together, each group with the plain
U-Net decoder as its reference, in ``rounds`` interleaved passes (one forward of a tile per
candidate per pass; the median is kept), so drifts of a shared machine hit all of them alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from open_buildings.models.registry import build_model
from open_buildings.training.search_space import Cell, to_text

REFERENCE = "reference"


def probe(model_name: str, *, tile: int, rounds: int, threads: int | None = None) -> float:
    """Seconds that measuring one cell takes here (export, runtime start, warm-up, ``rounds``
    forwards), timed on the plain decoder: what the search keeps aside per cell."""
    began = time.perf_counter()
    measure(model_name, [], tile=tile, rounds=rounds, group=1, threads=threads)
    return time.perf_counter() - began


def measure(
    model_name: str,
    cells: Sequence[Cell],
    *,
    tile: int,
    rounds: int,
    group: int,
    threads: int | None = None,
    done: Callable[[str, float, float], None] | None = None,
) -> dict[str, float]:
    """Milliseconds per ``tile``-pixel tile of each cell (key: ``to_text(cell)``) and of the plain
    decoder (key :data:`REFERENCE`, the median over groups; timed alone when no cell is given).

    Args:
        model_name: the U-Net family (``unet_efficientnet_lite1``...).
        cells: the candidates.
        tile: tile side in pixels.
        rounds: interleaved passes.
        group: candidates open at once (with the reference).
        threads: runtime threads (the runtime's default when None).
        done: called with ``(key, ms, reference_ms)`` as each group finishes (resume records).
    """
    from open_buildings.pipelines.onnx_backend import export_onnx
    from open_buildings.pipelines.runtime import export_runtime

    engine = export_runtime("auto")
    x = np.random.default_rng(0).random((1, 3, tile, tile), dtype=np.float32)
    out: dict[str, float] = {}
    references: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ob-search-cost-") as tmp:
        for start in range(0, max(len(cells), 1), group):  # no cells: the reference alone
            members = [None, *cells[start : start + group]]
            runners = []
            for k, cell in enumerate(members):
                overrides = {} if cell is None else {"decoder_cell": [list(b) for b in cell]}
                model = build_model(model_name, **overrides).eval()
                path = export_onnx(model, Path(tmp) / f"{start}_{k}.onnx")
                runner = engine(path, threads=threads)
                runner(x)  # warm-up: compilation and first-call allocations
                runners.append(runner)
            times: list[list[float]] = [[] for _ in members]
            for _ in range(rounds):
                for k, runner in enumerate(runners):
                    began = time.perf_counter()
                    runner(x)
                    times[k].append(1000 * (time.perf_counter() - began))
            reference = statistics.median(times[0])
            references.append(reference)
            for cell, measured in zip(members[1:], times[1:]):
                key = to_text(cell)
                out[key] = statistics.median(measured)
                if done is not None:
                    done(key, out[key], reference)
            for path in Path(tmp).glob(f"{start}_*.onnx"):
                path.unlink()
    if references:
        out[REFERENCE] = statistics.median(references)
    return out
