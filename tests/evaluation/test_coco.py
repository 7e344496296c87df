"""COCO instance mAP agrees with pycocotools (COCOeval, iouType "segm") to 1e-6.

The comparisons are exact by construction: polygons whose vertices lie on the pixel grid have
exactly the IoU of their rasterized masks, so pycocotools (masks, RLE) and this package (shapely
polygons) see the same numbers. A second family of checks feeds pycocotools the IoUs of the
original, unrasterized polygons and runs its own matching and accumulation on them.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine
from evalref import METRICS, pycoco_given_ious, pycoco_masks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import shape

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.coco import IOU_THRESHOLDS, CocoResult, polygon_map, raster_map
from open_buildings.evaluation.spacenet import read_spacenet_csv

SIZE = 32
STAT = {"ap": 0, "ap50": 1, "ap75": 2, "ar": 8}


def assert_agrees(ours: CocoResult, stats: np.ndarray) -> None:
    for name, i in STAT.items():
        value = getattr(ours, name)
        expected = float(stats[i])
        if expected == -1:
            assert value is None, (name, value)
        else:
            assert value is not None and abs(value - expected) <= 1e-6, (name, value, expected)


# A shape is one or two integer rectangles (an L, a T, two blobs...), as (x0, y0, x1, y1) boxes.
rect = st.tuples(
    st.integers(0, SIZE - 2), st.integers(0, SIZE - 2), st.integers(1, 12), st.integers(1, 12)
).map(lambda r: (r[0], r[1], min(SIZE, r[0] + r[2]), min(SIZE, r[1] + r[3])))
shape_ = st.lists(rect, min_size=1, max_size=2)
score = st.one_of(st.sampled_from([0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0))


@st.composite
def image(draw: st.DrawFn) -> tuple[list, list, list]:
    truth = draw(st.lists(shape_, max_size=6))
    pred = []
    for _ in range(draw(st.integers(0, 8))):
        if truth and draw(st.booleans()):  # a near-copy of a truth shape
            base = draw(st.sampled_from(truth))
            dx, dy, grow = (
                draw(st.integers(-2, 2)),
                draw(st.integers(-2, 2)),
                draw(st.integers(0, 2)),
            )
            moved = [
                (
                    min(max(x0 + dx, 0), SIZE - 1),
                    min(max(y0 + dy, 0), SIZE - 1),
                    min(max(x1 + dx + grow, 1), SIZE),
                    min(max(y1 + dy + grow, 1), SIZE),
                )
                for x0, y0, x1, y1 in base
            ]
            moved = [(a, b, max(c, a + 1), max(d, b + 1)) for a, b, c, d in moved]
            pred.append(moved)
        else:
            pred.append(draw(shape_))
    scores = [draw(score) for _ in pred]
    return truth, pred, scores


def to_mask(boxes: list) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = 1
    return m


def to_polygon(boxes: list) -> shapely.Geometry:
    return shapely.union_all([shapely.box(*b) for b in boxes])


def flatten(images: list) -> tuple:
    pred, scores, p_img, truth, t_img = [], [], [], [], []
    for i, (t, p, s) in enumerate(images):
        truth += [to_polygon(b) for b in t]
        t_img += [i] * len(t)
        pred += [to_polygon(b) for b in p]
        scores += s
        p_img += [i] * len(p)
    return (
        np.array(pred, dtype=object),
        np.array(scores, dtype=float),
        np.array(truth, dtype=object),
        np.array(p_img, dtype=int),
        np.array(t_img, dtype=int),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(image(), min_size=1, max_size=4))
def test_polygons_agree_with_pycocotools(images: list) -> None:
    pred, scores, truth, p_img, t_img = flatten(images)
    ours = polygon_map(pred, scores, truth, pred_image=p_img, truth_image=t_img)
    stats = pycoco_masks(
        [[to_mask(b) for b in t] for t, _, _ in images],
        [[to_mask(b) for b in p] for _, p, _ in images],
        [s for _, _, s in images],
    )
    assert_agrees(ours, stats)


@st.composite
def label_image(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    rasters = []
    for _ in range(2):
        lab = np.zeros((SIZE, SIZE), dtype=np.int32)
        for k in range(1, draw(st.integers(0, 7)) + 1):
            x0, y0, x1, y1 = draw(rect)
            lab[y0:y1, x0:x1] = draw(st.sampled_from([k, k + 100]))  # sparse label values
        rasters.append(lab)
    ids = np.unique(rasters[0][rasters[0] > 0])
    return rasters[0], rasters[1], {int(k): draw(score) for k in ids}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(label_image(), min_size=1, max_size=4))
def test_instance_rasters_agree_with_pycocotools(images: list) -> None:
    ours = raster_map(
        [p for p, _, _ in images], [s for _, _, s in images], [t for _, t, _ in images]
    )
    truth_masks, pred_masks, scores = [], [], []
    for p, t, s in images:
        truth_masks.append([t == k for k in np.unique(t[t > 0])])
        ids = np.unique(p[p > 0])
        pred_masks.append([p == k for k in ids])
        scores.append([s[int(k)] for k in ids])
    assert_agrees(ours, pycoco_masks(truth_masks, pred_masks, scores))


def test_empty_cases_agree_with_pycocotools() -> None:
    box = [(2, 2, 10, 10)]
    cases = [
        [([box], [], [])],  # truth, no predictions: AP 0, recall 0
        [([], [box], [0.9])],  # predictions, no truth: undefined (-1 / None)
        [([box], [], []), ([], [box], [0.5])],  # truth in one image, predictions in the other
    ]
    for images in cases:
        pred, scores, truth, p_img, t_img = flatten(images)
        ours = polygon_map(pred, scores, truth, pred_image=p_img, truth_image=t_img)
        stats = pycoco_masks(
            [[to_mask(b) for b in t] for t, _, _ in images],
            [[to_mask(b) for b in p] for _, p, _ in images],
            [s for _, _, s in images],
        )
        assert_agrees(ours, stats)
    assert polygon_map(pred[:0], scores[:0], truth).ap == 0.0


def test_max_dets_caps_at_100_per_image_like_pycocotools() -> None:
    rng = np.random.default_rng(7)
    t = [[(int(x), int(y), int(x) + 3, int(y) + 3)] for x, y in rng.integers(0, 29, (60, 2))]
    p = [[(int(x), int(y), int(x) + 3, int(y) + 3)] for x, y in rng.integers(0, 29, (150, 2))]
    s = rng.random(150).round(2).tolist()
    images = [(t, p, s)]
    pred, scores, truth, p_img, t_img = flatten(images)
    stats = pycoco_masks([[to_mask(b) for b in t]], [[to_mask(b) for b in p]], [s])
    capped = polygon_map(pred, scores, truth, pred_image=p_img, truth_image=t_img)
    assert capped.n_pred == 100
    assert_agrees(capped, stats)
    uncapped = polygon_map(pred, scores, truth, max_dets=None)
    assert uncapped.n_pred == 150 and uncapped.ar >= capped.ar


def rasterize_exact(geoms: np.ndarray, transform: Affine, shape: tuple[int, int]) -> tuple:
    """Masks of real polygons, and the pixel-exact polygons of those masks (same coordinates)."""
    masks, polys = [], []
    for g in geoms:
        m = rasterio.features.rasterize(
            [(g, 1)], out_shape=shape, transform=transform, dtype="uint8"
        )
        parts = [
            shape_of(s) for s, v in rasterio.features.shapes(m, mask=m > 0, transform=transform)
        ]
        masks.append(m)
        polys.append(shapely.union_all(parts) if parts else shapely.Polygon())
    return masks, np.array(polys, dtype=object)


def shape_of(geojson: dict) -> shapely.Geometry:
    return shape(geojson)


def test_real_solaris_polygons_rasterized_agree_with_pycocotools() -> None:
    gt = gpd.read_file(METRICS / "gt.geojson").geometry.values
    pr = gpd.read_file(METRICS / "pred.geojson")
    west, south, east, north = np.floor(gt.total_bounds) + [-5, -5, 6, 6]
    res = 0.5  # metres; a power of two keeps the pixel polygons' areas exact
    transform = Affine(res, 0, west, 0, -res, north)
    shape_ = (int((north - south) / res), int((east - west) / res))
    t_masks, t_polys = rasterize_exact(gt, transform, shape_)
    p_masks, p_polys = rasterize_exact(pr.geometry.values, transform, shape_)
    scores = np.linspace(0.2, 0.9, len(p_polys))[::-1].round(1)  # ties in groups
    keep_t = [m.any() for m in t_masks]
    keep_p = [m.any() for m in p_masks]
    ours = polygon_map(p_polys[keep_p], scores[keep_p], t_polys[keep_t], max_dets=100)
    stats = pycoco_masks(
        [[m for m, k in zip(t_masks, keep_t) if k]],
        [[m for m, k in zip(p_masks, keep_p) if k]],
        [scores[keep_p].tolist()],
    )
    assert_agrees(ours, stats)
    assert ours.ap50 > 0.05  # a real, non-trivial case


def _dense_iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    inter = shapely.area(shapely.intersection(pred[:, None], truth[None, :]))
    union = shapely.area(pred)[:, None] + shapely.area(truth)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def test_real_spacenet_csv_agrees_with_pycocotools_on_the_same_polygons() -> None:
    truth = read_spacenet_csv(METRICS / "SN2_sample_truth.csv")
    pred = read_spacenet_csv(METRICS / "SN2_sample_preds.csv")
    t_ok = ~shapely.is_empty(truth.geometry)
    t_geo, t_img = truth.geometry[t_ok], truth.image_id[t_ok]
    images = sorted(set(truth.image_id) | set(pred.image_id))
    per_t = [t_geo[t_img == i] for i in images]
    per_p = [pred.geometry[pred.image_id == i] for i in images]
    per_s = [pred.confidence[pred.image_id == i] for i in images]
    ours = polygon_map(
        pred.geometry, pred.confidence, t_geo, pred_image=pred.image_id, truth_image=t_img
    )

    def iou_of(k: int, d: np.ndarray, g: np.ndarray) -> np.ndarray:
        return _dense_iou(per_p[k][d], per_t[k][g])

    stats = pycoco_given_ious([len(t) for t in per_t], [s.tolist() for s in per_s], iou_of)
    assert_agrees(ours, stats)
    assert ours.ap == pytest.approx(float(stats[0]), abs=1e-12)
    assert len(set(pred.confidence)) > 1 and ours.ap50 > 0.2


def test_ap_per_threshold_and_validation() -> None:
    a = shapely.box(0, 0, 10, 10)
    res = polygon_map(np.array([a]), np.array([0.9]), np.array([a]))
    assert res.ap == pytest.approx(1.0) and res.ap50 == pytest.approx(1.0)  # eps as pycocotools
    assert len(res.ap_per_threshold) == len(IOU_THRESHOLDS) == 10
    with pytest.raises(EvaluationError, match="scores"):
        polygon_map(np.array([a]), np.array([0.9, 0.1]), np.array([a]))
    with pytest.raises(EvaluationError, match="no score"):
        raster_map([np.ones((2, 2), int)], [{}], [np.ones((2, 2), int)])


def test_iou_ties_go_to_the_last_truth_like_pycocotools() -> None:
    # P1 overlaps A and B with IoU 0.8 each; pycocotools gives it the last (B), so P2 (== B)
    # can then only take A at IoU 0.6 and misses at thresholds above 0.6.
    t = [[(0, 0, 4, 4)], [(1, 0, 5, 4)]]
    p = [[(0, 0, 5, 4)], [(1, 0, 5, 4)]]
    s = [0.9, 0.8]
    pred, scores, truth, p_img, t_img = flatten([(t, p, s)])
    ours = polygon_map(pred, scores, truth)
    assert_agrees(ours, pycoco_masks([[to_mask(b) for b in t]], [[to_mask(b) for b in p]], [s]))
    assert ours.ap75 < 1.0
