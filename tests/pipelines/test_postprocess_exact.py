"""The faster decode and polygonize give exactly what the straightforward versions gave.

Real inputs: the shipped model's logits on the sample's tiles. The references below are the code
as it was before the speed-ups (one watershed over the whole tile; ``shapely.geometry.shape`` on
each GDAL polygon; every instance polygonized, ownership decided afterwards).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed

from open_buildings.geo import grid, imagery, polygonize, regions
from open_buildings.models import heads
from open_buildings.pipelines import postprocess, runtime
from open_buildings.pipelines.config import RuntimeConfig

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "geo" / "sample"


@pytest.fixture(scope="module")
def outputs() -> list[tuple[grid.Tile, np.ndarray, np.ndarray]]:
    """``(tile, valid, logits)`` of the default model on each sample tile with imagery."""
    model, _, _ = runtime.load_model(runtime.resolve_model("default"), RuntimeConfig())
    source = imagery.open_imagery(str(SAMPLE / "items.json"))
    out = []
    for tile in grid.cover(regions.read_region(SAMPLE / "region.geojson").geometry):
        image = source.read(tile.grid)
        if not image.empty:
            out.append((tile, image.valid, runtime.run_model(model, [image.rgb])[0]))
    assert len(out) == 2
    return out


def reference_decode(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``heads.decode`` before the speed-up: one watershed over the whole tile."""
    probs = heads._as_probs(logits, True)
    building, interior = np.nan_to_num(probs[0]), np.nan_to_num(probs[1])
    mask = building > 0.5
    seeds, n_seeds = ndi.label(mask & (interior > 0.5), structure=np.ones((3, 3), bool))
    labels = watershed(-interior, markers=seeds, mask=mask, connectivity=1)
    orphans, n_orphans = ndi.label(mask & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + n_seeds, labels)
    sizes = np.bincount(labels.ravel())
    small = sizes < 8
    small[0] = False
    labels[small[labels]] = 0
    labels, _, _ = relabel_sequential(labels.astype(np.int32))
    confidence = np.zeros(int(labels.max()) + 1, dtype=np.float32)
    confidence[1:] = ndi.mean(building, labels=labels, index=np.arange(1, labels.max() + 1))
    return labels, confidence


def test_decode_gives_the_labels_of_one_whole_tile_watershed(outputs: list) -> None:
    instances = 0
    for _, _, logits in outputs:
        want_labels, want_confidence = reference_decode(logits)
        labels, confidence = heads.decode(logits)
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(confidence, want_confidence)
        instances += int(labels.max())
    assert instances > 100  # components with two and more seeds were among them
    # a mask holding several seeds in one component really goes through the watershed
    logits = np.full((2, 12, 20), -5.0, dtype=np.float32)
    logits[0, 2:10, 2:18] = 5.0  # one building blob ...
    logits[1, 4:8, 3:6] = 5.0  # ... with two interiors
    logits[1, 4:8, 14:17] = 5.0
    labels, _ = heads.decode(logits)
    np.testing.assert_array_equal(labels, reference_decode(logits)[0])
    assert set(np.unique(labels)) == {0, 1, 2}


def test_decode_matches_the_reference_on_random_fields() -> None:
    # smooth random logits: blobs whose seeds touch diagonally, split across 4-components,
    # several seeds in one blob, seedless blobs, specks under min_pixels, and NaNs
    rng = np.random.default_rng(0)
    for k in range(20):
        x = ndi.gaussian_filter(rng.normal(0, 3, (2, 160, 200)), (0, 2, 2)).astype(np.float32) * 8
        if k % 5 == 0:
            x[:, 10:14, 20:30] = np.nan
        want_labels, want_confidence = reference_decode(x)
        labels, confidence = heads.decode(x)
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(confidence, want_confidence)


def test_owned_footprints_are_those_of_polygonizing_every_instance(
    outputs: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = [(tile, valid, heads.decode(logits)) for tile, valid, logits in outputs]
    fast = [postprocess.owned_footprints(t, lab, conf, v) for t, v, (lab, conf) in decoded]

    dropped = sum(
        len(np.unique(np.where(v, lab, 0)))
        - len(np.unique(postprocess._ownable(t, np.where(v, lab, 0), 0.5)))
        for t, v, (lab, _) in decoded
    )
    assert dropped > 0  # instances wholly in the margin were left out before polygonizing
    real = polygonize._polygons_from_rings
    monkeypatch.setattr(
        polygonize,
        "_polygons_from_rings",
        lambda rings: np.asarray(
            [shapely.Polygon(parts[0], parts[1:]) for parts in rings], dtype=object
        ),
    )
    monkeypatch.setattr(postprocess, "_ownable", lambda tile, labels, simplify_m: labels)
    slow = [postprocess.owned_footprints(t, lab, conf, v) for t, v, (lab, conf) in decoded]
    assert real is not polygonize._polygons_from_rings
    assert sum(len(f) for f in fast) > 50
    for got, want in zip(fast, slow, strict=True):
        assert got.drop(columns="geometry").equals(want.drop(columns="geometry"))
        assert list(shapely.to_wkb(got.geometry.values)) == list(
            shapely.to_wkb(want.geometry.values)
        )


def test_the_model_runs_on_the_imagery_window_with_the_whole_tiles_answers(outputs: list) -> None:
    from open_buildings.pipelines.forward import NO_DATA_LOGIT, run_on_imagery, valid_window

    model, _, _ = runtime.load_model(runtime.resolve_model("default"), RuntimeConfig())
    source = imagery.open_imagery(str(SAMPLE / "items.json"))
    for tile, valid, whole in outputs:
        image = source.read(tile.grid)
        r0, r1, c0, c1 = valid_window(valid)
        assert r0 % 64 == 0 and c0 % 64 == 0 and (r1 - r0) * (c1 - c0) < 0.5 * valid.size
        rows, cols = np.nonzero(valid)
        assert r0 <= rows.min() and rows.max() < r1 and c0 <= cols.min() and cols.max() < c1
        (cropped,) = run_on_imagery(model, [(image.rgb, image.valid)])
        assert cropped.shape == whole.shape
        outside = np.ones(valid.shape, dtype=bool)
        outside[r0:r1, c0:c1] = False
        assert (cropped[:, outside] == NO_DATA_LOGIT).all()
        # where there is imagery the building mask is the whole tile's (the model's context
        # differs only beyond the imagery's edge)
        agree = ((cropped[0] > 0) == (whole[0] > 0))[valid].mean()
        assert agree > 0.995, agree
    full = np.ones((3, 200, 190), dtype=np.uint8) * 120
    everywhere = np.ones((200, 190), dtype=bool)
    assert valid_window(everywhere) == (0, 200, 0, 190)
    np.testing.assert_array_equal(
        run_on_imagery(model, [(full, everywhere)])[0], runtime.run_model(model, [full])[0]
    )
