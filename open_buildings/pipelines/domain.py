"""Does a tile look like the imagery the model was trained on? Cheap statistics, never a filter.

A model fed imagery unlike its training data (a grey panchromatic scan copied to three bands, a
uint16 scene stretched differently, snow) writes confident nonsense, silently. Per tile,
:func:`tile_stats` measures what is cheap and telling: each band's mean and spread over the valid
pixels, how colourful the pixels are (the mean spread between a pixel's bands: 0 for grey), and the
share of pixels the model calls building. :func:`input_ranges` turns the statistics of the training
tiles into ranges, widened by half their span on each side and at least by :data:`MIN_MARGIN` (a
new city differs from the training towns; the held-out Nairobi tiles fall inside the widened ranges
of the default model), and :func:`outside` names each statistic of a tile that falls outside them.
The pipeline warns once per run, naming the tiles, and records them in the manifest; it never drops
a footprint because of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from open_buildings.pipelines.device_decode import DecodedTile

#: The statistics, in the order they are reported.
STATS = (
    "mean_1",
    "mean_2",
    "mean_3",
    "std_1",
    "std_2",
    "std_3",
    "colourfulness",
    "building_fraction",
)
#: Each range is widened by this share of its span on both sides...
WIDEN = 0.5
#: ...and by at least this much: a few training tiles say little about how far a familiar
#: city's brightness may drift (the held-out Nairobi tiles reach 0.05 above the training
#: towns' blue mean), while grey imagery is 0.03 below their least colourful tile.
MIN_MARGIN = {"mean": 0.1, "std": 0.05, "colourfulness": 0.02, "building_fraction": 0.1}


def tile_stats(
    rgb: np.ndarray, valid: np.ndarray, logits: np.ndarray | DecodedTile
) -> dict[str, float]:
    """Measure one tile: band means and spreads, colourfulness, and the predicted building share.

    Args:
        rgb: uint8 ``(3, H, W)``, the pixels the model saw.
        valid: bool ``(H, W)``, where there is imagery.
        logits: the model's ``(C, H, W)`` output (channel 0 is ``building``), or the tile as
            decoded on the model's device, which carries the building share.

    Returns:
        One value per name in :data:`STATS` (intensities scaled to [0, 1]); empty when no pixel
        is valid.
    """
    if not valid.any():
        return {}
    # On the uint8 pixels, accumulated in float64: no float copy of the tile (4x faster).
    x = rgb[:, valid]
    out = {f"mean_{b + 1}": float(x[b].mean(dtype=np.float64) / 255.0) for b in range(3)}
    out |= {f"std_{b + 1}": float(x[b].std(dtype=np.float64) / 255.0) for b in range(3)}
    spread = np.maximum(np.maximum(x[0], x[1]), x[2]) - np.minimum(np.minimum(x[0], x[1]), x[2])
    out["colourfulness"] = float(spread.mean(dtype=np.float64) / 255.0)
    if isinstance(logits, DecodedTile):
        out["building_fraction"] = logits.building_fraction
    else:  # sigmoid(logit) > 0.5 exactly where logit > 0
        out["building_fraction"] = float(np.count_nonzero(logits[0][valid] > 0) / x.shape[1])
    return out


def input_ranges(stats: Iterable[Mapping[str, float]], widen: float = WIDEN) -> dict[str, list]:
    """Return ``{stat: [low, high]}``: the range over tiles, widened (see :data:`MIN_MARGIN`).

    Args:
        stats: :func:`tile_stats` of the training tiles (empty ones are skipped).
        widen: the share of each range's span added below and above it.

    Raises:
        ValueError: if no tile has statistics.
    """
    rows = [s for s in stats if s]
    if not rows:
        raise ValueError("no tile with imagery to measure the input ranges on")
    out = {}
    for name in STATS:
        values = np.array([r[name] for r in rows], dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        kind = name.split("_")[0] if name[-1].isdigit() else name  # mean_1 -> mean
        margin = max(widen * (high - low), MIN_MARGIN[kind])
        floor = low - margin
        if kind in ("std", "colourfulness"):
            # These are never negative: an additive margin below a small minimum would accept
            # 0 (a grey image copied to three bands, or a flat one), so go at most halfway to 0.
            floor = max(floor, 0.5 * low)
        out[name] = [floor, high + margin]
    return out


def outside(stats: Mapping[str, float], ranges: Mapping[str, list]) -> list[str]:
    """Name every statistic of a tile outside its range, with the value and the range.

    Args:
        stats: from :func:`tile_stats`.
        ranges: from :func:`input_ranges` (statistics it lacks are not checked).

    Returns:
        Lines such as ``"colourfulness 0.000 < 0.037"``; empty when the tile looks familiar.
    """
    found = []
    for name in STATS:
        if name not in stats or name not in ranges:
            continue
        low, high = ranges[name]
        value = stats[name]
        if value < low:
            found.append(f"{name} {value:.3f} < {low:.3f}")
        elif value > high:
            found.append(f"{name} {value:.3f} > {high:.3f}")
    return found
