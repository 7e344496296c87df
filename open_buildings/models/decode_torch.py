"""The decode of :mod:`.heads` in PyTorch, so a GPU turns its own logits into instances.

On a GPU worker the model's output is two float channels per pixel; copying them to the host and
decoding there (:func:`.heads.decode`, scipy and scikit-image) costs CPU time that one GPU's
throughput would need hundreds of cores for. :func:`decode_on_device` does the same steps where the
logits are and hands back what the polygonizer needs: instance labels (``uint16`` when they fit,
a quarter of the logits' bytes), one confidence per instance, and the tile's building share.

No library labels connected components or floods a seeded watershed in torch, so both are written
here. After one pass over the tiles, every step works on the building pixels only (a few to a
few tens of percent of a tile), each holding the indices of its neighbours:

- components: every member pixel starts with a key for its raster position (larger = earlier),
  takes the largest key among its neighbours, and jumps to the key its key's pixel holds
  (pointer jumping, so a component settles in about log2 of its length steps plus its width);
  the settled key is the component's first pixel in raster order, so instances are numbered as
  ``scipy.ndimage.label`` numbers them.
- the watershed: seeds grow over the building mask through ``levels`` descending bands of
  interior probability. As in scikit-image's flood, a labelled pixel hands its label to its
  unlabelled 4-neighbours when its own value comes up (here: when the band reaches it), and a
  pixel reached by two at once takes the label of the one with the higher interior.
  scikit-image orders pixels exactly, so where two seeds meet the border can differ by a pixel;
  components with one seed or none (most buildings) get exactly the CPU decode's labels.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["decode_on_device"]

_FOUR = ((-1, 0), (1, 0), (0, -1), (0, 1))
_EIGHT = (*_FOUR, (-1, -1), (-1, 1), (1, -1), (1, 1))


def _neighbour_table(pos: torch.Tensor, shape: tuple[int, ...], offsets: tuple) -> torch.Tensor:
    """``(len(offsets), M)``: the index among ``pos`` of each pixel's neighbour, M if none."""
    _, height, width = shape
    count = pos.numel()
    index_of = torch.full((int(np.prod(shape)),), count, dtype=torch.int64, device=pos.device)
    index_of[pos] = torch.arange(count, device=pos.device)
    row, col = (pos // width) % height, pos % width
    rows = []
    for dr, dc in offsets:
        inside = (row + dr >= 0) & (row + dr < height) & (col + dc >= 0) & (col + dc < width)
        there = (pos + dr * width + dc).clamp_(0, index_of.numel() - 1)
        rows.append(torch.where(inside, index_of[there], count))
    return torch.stack(rows).to(torch.int32 if count < 2**31 else torch.int64)


def _gather(values: torch.Tensor, table: torch.Tensor, fill: float) -> torch.Tensor:
    """``values`` at each neighbour index of ``table`` (``fill`` where the index is M)."""
    padded = torch.cat([values, values.new_full((1,), fill)])
    return padded[table.long()]


def _components(member: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Each member pixel's component key (M - index of its first pixel); 0 elsewhere."""
    count = member.numel()
    keys = torch.where(member, torch.arange(count, 0, -1, device=member.device), 0)
    while True:
        grown = torch.where(member, torch.maximum(keys, _gather(keys, table, 0).amax(0)), 0)
        pointed = (count - grown).clamp_(0, count - 1)
        jumped = torch.where(member, torch.maximum(grown, grown[pointed]), 0)
        if torch.equal(jumped, keys):
            return keys
        keys = jumped


def _flood(
    keys: torch.Tensor, interior: torch.Tensor, table: torch.Tensor, bands: torch.Tensor
) -> torch.Tensor:
    """Grow the seed ``keys`` over every pixel, band by band of descending ``interior``."""
    for floor in bands:
        while True:
            value = torch.where((keys > 0) & (interior > floor), interior, -1.0)
            best, which = _gather(value, table, -1.0).max(0)
            claim = (keys == 0) & (best >= 0)
            if not bool(claim.any()):
                break
            near = _gather(keys, table, 0).gather(0, which[None])[0]
            keys = torch.where(claim, near, keys)
    return keys


def decode_on_device(
    logits: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    building_threshold: float = 0.5,
    interior_threshold: float = 0.5,
    min_pixels: int = 8,
    levels: int = 16,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Decode a batch of tiles' logits where they are (:func:`.heads.decode`'s steps).

    Every step runs on the whole batch at once, so a GPU launches each kernel once per batch,
    not once per tile.

    Args:
        logits: ``(B, 2, H, W)`` building and interior logits, on any device.
        valid: bool ``(B, H, W)`` where there is imagery, for the building share; None = all.
        building_threshold: a pixel is building where its building probability is above this.
        interior_threshold: a building pixel seeds an instance where its interior probability is
            above this.
        min_pixels: instances with fewer pixels are dropped.
        levels: bands of interior probability the seeds grow through, highest first.

    Returns:
        Per tile, on the host: ``labels`` ``(H, W)``, 0 = background, 1..N numbered as the CPU
        decode numbers them, ``uint16`` when N < 65536 else ``int32``; ``confidence``
        ``float32 (N + 1,)``, the mean building probability of each instance (index 0 is 0);
        and the share of the tile's ``valid`` pixels whose building logit is above 0.
    """
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise ValueError(f"decode_on_device expects (B, 2, H, W) logits, got {tuple(logits.shape)}")
    if min_pixels < 0 or levels < 1:
        raise ValueError(f"min_pixels must be >= 0 and levels >= 1, got {min_pixels}, {levels}")
    logits = logits.float()
    probs = torch.nan_to_num(torch.sigmoid(logits), nan=0.0)
    building, interior = probs[:, 0], probs[:, 1]
    device = logits.device
    mask = building > building_threshold
    pos = torch.nonzero(mask.reshape(-1)).squeeze(1)  # the building pixels, in raster order
    inside = interior.reshape(-1)[pos]
    four = _neighbour_table(pos, tuple(mask.shape), _FOUR)
    eight = _neighbour_table(pos, tuple(mask.shape), _EIGHT)
    seeds = _components(inside > interior_threshold, eight)
    bands = torch.linspace(interior_threshold, 0.0, levels + 1, device=device)[1:]
    bands[-1] = -1.0  # the last band takes every remaining building pixel
    grown = _flood(seeds, inside, four, bands)
    orphans = _components(grown == 0, four)
    count = pos.numel()
    # one order for a tile's instances: seeds by their first pixel, then seedless blobs by theirs
    order = torch.where(grown > 0, count - grown, 2 * count - orphans)
    within = torch.ones_like(mask) if valid is None else valid.to(device=device, dtype=torch.bool)
    above = (logits[:, 0] > 0) & within
    counted = zip(above.sum((1, 2)).tolist(), within.sum((1, 2)).tolist(), strict=True)
    shares = [a / n if n else 0.0 for a, n in counted]
    tile_px = mask[0].numel()
    bounds = torch.searchsorted(pos, torch.arange(mask.shape[0] + 1, device=device) * tile_px)
    out = []
    for b, (start, stop) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
        part = slice(start, stop)
        where = pos[part] - b * tile_px
        labels, confidence = _instances(order[part], where, building[b], min_pixels)
        out.append((labels, confidence, shares[b]))
    return out


def _instances(
    order: torch.Tensor, where: torch.Tensor, building: torch.Tensor, min_pixels: int
) -> tuple[np.ndarray, np.ndarray]:
    """One tile's labels (numbered by ``order``, small ones dropped) and confidences, on host."""
    present, inverse, counts = torch.unique(order, return_inverse=True, return_counts=True)
    kept = counts >= max(min_pixels, 1)
    new_id = torch.cumsum(kept, 0) * kept
    count = int(kept.sum())
    labels = torch.zeros(building.numel(), dtype=torch.int32, device=building.device)
    labels[where] = new_id[inverse].int()
    sums = torch.zeros(present.numel(), dtype=torch.float64, device=building.device)
    sums.index_add_(0, inverse, building.reshape(-1)[where].double())
    confidence = torch.zeros(count + 1, dtype=torch.float32, device=building.device)
    confidence[1:] = (sums[kept] / counts[kept]).float()
    labels = labels.view(building.shape)
    if count < 2**16:  # torch has no uint16 arithmetic on every device; int16 has the same bytes
        host = labels.to(torch.int16).cpu().numpy().view(np.uint16)
    else:
        host = labels.cpu().numpy()
    return host, confidence.cpu().numpy()
