"""The output channels: instance labels -> training targets, and model outputs -> instances.

Channels (:data:`CHANNELS`):

- ``building``: 1 on every building pixel.
- ``interior``: 1 on building pixels whose whole ``(2 * erosion_px + 1)``-square neighbourhood
  lies in the same building. Two buildings that touch, even along one pixel, get interiors at
  least two pixels apart, so the interiors are the seeds that keep touching buildings separate.
  The border ring is ``building - interior``, so a third "border" channel would carry nothing
  new; two channels keep the loss simple and both are plain sigmoids.

Per-pixel loss weight (:func:`make_targets`), after the U-Net paper (Ronneberger et al. 2015)::

    w = 1 + edge_weight * exp(-d_edge^2 / (2 sigma^2))
          + separation_weight * exp(-(d1 + d2)^2 / (2 sigma^2))

where ``d_edge`` is the distance to the nearest building-border pixel and ``d1 <= d2`` are the
distances to the nearest and second-nearest building (0 inside a building). The first term
weights every building edge; the second is large only where two buildings nearly touch.

Decoding (:func:`decode`) thresholds the interior into seeds, grows them back over the
thresholded building mask by seeded watershed on the interior probability, keeps seedless
building blobs as instances of their own, drops those under ``min_pixels`` and scores each
instance by its mean building probability. This module needs numpy/scipy/scikit-image only;
torch tensors are accepted and converted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit
from skimage.segmentation import watershed

__all__ = ["CHANNELS", "Targets", "decode", "make_targets"]

CHANNELS: tuple[str, ...] = ("building", "interior")

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Targets:
    """Training targets for one chip.

    Attributes:
        target: ``float32 (len(CHANNELS), H, W)``, in the order of :data:`CHANNELS`.
        weight: ``float32 (H, W)``, the per-pixel loss weight (>= 1).
    """

    target: np.ndarray
    weight: np.ndarray


def _as_labels(instances: Any) -> np.ndarray:
    if hasattr(instances, "detach"):
        instances = instances.detach().cpu().numpy()
    labels = np.asarray(instances)
    if labels.ndim != 2:
        raise ValueError(f"instances must be a 2-D (H, W) array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(
            f"instances must hold integer ids (0 = background), got dtype {labels.dtype}"
        )
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError("instances must be >= 0 (0 = background, 1..N = buildings)")
    return labels


def _interior(labels: np.ndarray, erosion_px: int) -> np.ndarray:
    size = 2 * erosion_px + 1
    hi = ndi.maximum_filter(labels, size=size, mode="nearest")
    lo = ndi.minimum_filter(labels, size=size, mode="nearest")
    inside = (labels > 0) & (hi == labels) & (lo == labels)
    # A building thinner than the erosion would lose its seed; give it its most central pixel.
    present = np.unique(labels[labels > 0])
    seeded = np.unique(labels[inside])
    lost = np.setdiff1d(present, seeded, assume_unique=True)
    if lost.size:
        slices = ndi.find_objects(labels)
        for ident in lost:
            sl = slices[ident - 1]
            own = np.pad(labels[sl] == ident, 1)
            dist = ndi.distance_transform_edt(own)[1:-1, 1:-1]
            r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
            inside[sl[0].start + r, sl[1].start + c] = True
    return inside


def _nearest_two(labels: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    # Distances to the nearest and second-nearest building, each building's distance computed
    # only within its bounding box grown by `margin` (beyond it the weight term is negligible).
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    height, width = labels.shape
    for ident, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        r0, r1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, height)
        c0, c1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, width)
        window = labels[r0:r1, c0:c1] != ident
        d = ndi.distance_transform_edt(window)
        a, b = d1[r0:r1, c0:c1], d2[r0:r1, c0:c1]
        d2[r0:r1, c0:c1] = np.minimum(b, np.maximum(a, d))
        d1[r0:r1, c0:c1] = np.minimum(a, d)
    return d1, d2


def make_targets(
    instances: Any,
    *,
    edge_weight: float = 2.0,
    separation_weight: float = 10.0,
    sigma_px: float = 3.0,
    erosion_px: int = 1,
) -> Targets:
    """Build the training targets and loss weights for one chip of rasterised instances.

    Args:
        instances: ``(H, W)`` integer instance ids, 0 = background, 1..N = buildings (ids need
            not be contiguous). Numpy array or torch tensor.
        edge_weight: Extra weight on building border pixels (decays with ``sigma_px``).
        separation_weight: Extra weight where two buildings nearly touch (U-Net ``w0``).
        sigma_px: Decay length of both extra weights, in pixels (3 px = 1.5 m at 50 cm).
        erosion_px: Half-width of the square that must lie inside a building for a pixel to be
            ``interior``.

    Returns:
        The targets (``(C, H, W)``) and the weight map (``(H, W)``).
    """
    labels = _as_labels(instances)
    if edge_weight < 0 or separation_weight < 0:
        raise ValueError("edge_weight and separation_weight must be >= 0")
    if sigma_px <= 0:
        raise ValueError(f"sigma_px must be positive, got {sigma_px}")
    if int(erosion_px) != erosion_px or erosion_px < 1:
        raise ValueError(f"erosion_px must be a positive integer, got {erosion_px}")
    erosion_px = int(erosion_px)

    building = labels > 0
    interior = _interior(labels, erosion_px) if building.any() else np.zeros_like(building)
    target = np.stack([building, interior]).astype(np.float32)

    weight = np.ones(labels.shape, dtype=np.float64)
    if building.any():
        two_sigma2 = 2.0 * sigma_px**2
        ring = building & ~_interior(labels, 1)
        d_edge = ndi.distance_transform_edt(~ring)
        weight += edge_weight * np.exp(-(d_edge**2) / two_sigma2)
        d1, d2 = _nearest_two(labels, margin=math.ceil(4 * sigma_px))
        with np.errstate(invalid="ignore"):
            weight += separation_weight * np.exp(-((d1 + d2) ** 2) / two_sigma2)
    return Targets(target=target, weight=weight.astype(np.float32))


def _as_probs(outputs: Any, from_logits: bool) -> np.ndarray:
    if hasattr(outputs, "detach"):
        outputs = outputs.detach().float().cpu().numpy()
    arr = np.asarray(outputs, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != len(CHANNELS):
        raise ValueError(
            f"decode expects ({len(CHANNELS)}, H, W) outputs ({', '.join(CHANNELS)}), "
            f"got shape {arr.shape}; decode one image of the batch at a time"
        )
    if from_logits:
        return expit(arr)
    if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
        raise ValueError(
            "decode got from_logits=False but values outside [0, 1]; pass logits with "
            "from_logits=True"
        )
    return arr


def _seeds_per_component(
    owner: np.ndarray, ids: np.ndarray, n_components: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per component (0..n_components): its seed pixels, whether they all belong to one seed,
    and that seed's id (where they do), from each seed pixel's component and seed id.

    They belong to one seed exactly when n * sum(id^2) == sum(id)^2 (Cauchy-Schwarz): three
    bincounts instead of a sort of every seed pixel. That needs the float64 sums exact and their
    products within int64; beyond (a tile with tens of thousands of seeds and millions of seed
    pixels) the distinct (component, seed) pairs are counted instead.
    """
    ids = ids.astype(np.int64)
    n = np.bincount(owner, minlength=n_components + 1)
    top = int(ids.max(initial=0))
    if ids.size * top < 2**31 and ids.size * top * top < 2**53:
        total = np.bincount(owner, weights=ids, minlength=n_components + 1).astype(np.int64)
        squares = np.bincount(owner, weights=ids * ids, minlength=n_components + 1)
        single = (n > 0) & (n * squares.astype(np.int64) == total * total)
        return n, single, np.where(single, total // np.maximum(n, 1), 0)
    pairs = np.unique(owner.astype(np.int64) * (top + 1) + ids)
    component, seed = np.divmod(pairs, top + 1)
    distinct = np.bincount(component, minlength=n_components + 1)
    seed_of = np.zeros(n_components + 1, dtype=np.int64)
    seed_of[component] = seed
    return n, distinct == 1, np.where(distinct == 1, seed_of, 0)


def _touching(region: np.ndarray) -> np.ndarray:
    """Pixels 4-adjacent to ``region`` (shifted ORs: a tenth of ``binary_dilation``'s cost)."""
    near = np.zeros_like(region)
    near[1:] |= region[:-1]
    near[:-1] |= region[1:]
    near[:, 1:] |= region[:, :-1]
    near[:, :-1] |= region[:, 1:]
    return near


def _seeded_labels(mask: np.ndarray, interior: np.ndarray, interior_threshold: float) -> np.ndarray:
    """Instances of ``mask``: a seeded watershed on ``-interior``, run only where it matters.

    Seeds are the 8-connected blobs of confident interior. The watershed (4-connected) floods
    each 4-connected component of the mask from the seeds inside it, so a component with one seed
    is simply that seed's instance, and one with none becomes an instance of its own (numbered
    after the seeds, in raster order). Only components holding two or more seeds need the
    watershed, and there only the pixels that are not seeds (the gaps) need flooding: a seed
    pixel keeps its seed, and a gap is reached only from the seed pixels that touch it. So one
    watershed runs over the gaps and their bordering seed pixels, about a third of those
    components' pixels. It gives the labels of one watershed over the whole tile: skimage floods
    by value, then by the order pixels were queued, and seed pixels inside a seed queue nothing.
    One exception: skimage queues every seed pixel at age 0, so seed pixels of equal value leave
    in the order of its heap's layout, which queueing fewer of them changes. Where gap pixels
    also tie, a pixel between two seeds can then go to the other one: 3.4% of the pixels of a
    constructed field of constant logits cut into seeds by constant lines. The real tiles and
    random fields of ``tests/pipelines/test_postprocess_exact.py`` (and the real tiles of
    ``bench.postprocess_rev`` with their logits scaled up to 4x) decode exactly as one whole-tile
    watershed.
    """
    seeds, n_seeds = ndi.label(mask & (interior > interior_threshold), structure=_EIGHT)
    components, n_components = ndi.label(mask)
    if not n_components:
        return np.zeros(mask.shape, dtype=np.int64)
    seeded = seeds > 0
    n, single, seed_of = _seeds_per_component(components[seeded], seeds[seeded], n_components)
    lut = np.zeros(n_components + 1, dtype=np.int64)
    lut[single] = seed_of[single]
    unseeded = np.flatnonzero(n == 0)[1:]  # component 0 is the background
    lut[unseeded] = n_seeds + np.arange(1, unseeded.size + 1)
    labels = lut[components]
    several = (n > 0) & ~single
    if several.any():
        shared = several[components]
        gaps = shared & ~seeded
        shore = seeded & _touching(gaps)
        flooded = watershed(
            -interior, markers=np.where(shore, seeds, 0), mask=gaps | shore, connectivity=1
        )
        labels[shared] = np.where(seeded, seeds, flooded)[shared]
    return labels


def decode(
    outputs: Any,
    *,
    from_logits: bool = True,
    building_threshold: float = 0.5,
    interior_threshold: float = 0.5,
    min_pixels: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn one image's model outputs into instance labels and per-instance confidences.

    Args:
        outputs: ``(len(CHANNELS), H, W)`` logits or probabilities, numpy or torch.
        from_logits: ``outputs`` are logits (a sigmoid is applied) rather than probabilities.
        building_threshold: A pixel is building where its building probability is above this.
        interior_threshold: A pixel seeds an instance where its interior probability is above
            this (and it is building).
        min_pixels: Instances with fewer pixels are dropped (8 px = 2 m2 at 50 cm).

    Returns:
        ``labels``: ``int32 (H, W)``, 0 = background, 1..N = instances;
        ``confidence``: ``float32 (N + 1,)``, the mean building probability inside each
        instance, indexed by label (index 0 is unused and set to 0).
    """
    probs = _as_probs(outputs, from_logits)
    for name, value in (("building", building_threshold), ("interior", interior_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}_threshold must be in [0, 1], got {value}")
    if min_pixels < 0:
        raise ValueError(f"min_pixels must be >= 0, got {min_pixels}")
    if np.isnan(probs).any():
        probs = np.nan_to_num(probs, nan=0.0)
    building, interior = probs[0], probs[1]
    mask = building > building_threshold
    labels = _seeded_labels(mask, interior, interior_threshold)
    # Drop instances under min_pixels and number the rest 1..N in their order, through one
    # lookup table (what skimage's relabel_sequential returns here, at a fifth of its cost).
    # Instances lie inside the mask, so sizes and sums are taken over its pixels only.
    inside = labels[mask]
    sizes = np.bincount(inside, minlength=1)
    kept = sizes >= max(min_pixels, 1)
    kept[0] = False
    inside = (np.cumsum(kept) * kept).astype(np.int32)[inside]
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels[mask] = inside
    count = int(kept.sum())
    confidence = np.zeros(count + 1, dtype=np.float32)
    if count:
        # ndi.mean's own arithmetic (float64 bincount sums over the pixel counts, each instance's
        # pixels added in raster order), without its lookups
        sums = np.bincount(inside, weights=building[mask], minlength=count + 1)
        confidence[1:] = sums[1:] / sizes[kept]
    return labels, confidence
