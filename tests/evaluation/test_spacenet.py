"""SpaceNet F1 on the published fixtures gives exactly the published figures.

Expected values: CosmiQ/solaris tests, for these very files.
- ``tests/test_eval/evaluator_test.py::test_score_proposals`` (gt.geojson vs pred.geojson):
  TP 8, FP 20, FN 20, precision = recall = F1 = 0.2857142857142857.
- ``tests/test_eval/spacenet_buildings2_dataset_test.py`` compares against
  ``solaris/data/SN2_test_results_full.csv`` (SN2_sample_preds.csv vs SN2_sample_truth.csv,
  miniou 0.5, min_area 20), reproduced row by row below.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from evalref import METRICS

from open_buildings.evaluation.matching import polygon_ious
from open_buildings.evaluation.spacenet import (
    Counts,
    aggregate,
    read_spacenet_csv,
    spacenet_f1,
)

# solaris/data/SN2_test_results_full.csv @ a5eadb389567a8684d268d6df5f403539445cd58:
# imageID: (TruePos, FalsePos, FalseNeg, Precision, Recall, F1Score)
SN2_EXPECTED = {
    "AOI_5_Khartoum_img130": (
        22,
        13,
        32,
        0.6285714285714286,
        0.4074074074074074,
        0.4943820224719101,
    ),
    "AOI_2_Vegas_img3457": (28, 2, 6, 0.9333333333333333, 0.8235294117647058, 0.8749999999999999),
    "AOI_2_Vegas_img5979": (7, 0, 1, 1.0, 0.875, 0.9333333333333333),
    "AOI_5_Khartoum_img1301": (17, 15, 23, 0.53125, 0.425, 0.47222222222222215),
    "AOI_5_Khartoum_img1306": (13, 27, 20, 0.325, 0.3939393939393939, 0.35616438356164376),
    "AOI_5_Khartoum_img463": (0, 0, 0, 0.0, 0.0, 0.0),
}


def sn2(strict: bool = False):
    truth = read_spacenet_csv(METRICS / "SN2_sample_truth.csv")
    pred = read_spacenet_csv(METRICS / "SN2_sample_preds.csv")
    return spacenet_f1(
        pred.geometry,
        pred.confidence,
        truth.geometry,
        pred_image=pred.image_id,
        truth_image=truth.image_id,
        min_area=20,
        strict=strict,
    )


@pytest.mark.parametrize("strict", [False, True])
def test_sn2_sample_per_image_is_exactly_solaris(strict: bool) -> None:
    result = sn2(strict)
    assert set(result.per_image) == set(SN2_EXPECTED)
    for image, (tp, fp, fn, p, r, f1) in SN2_EXPECTED.items():
        c = result.per_image[image]
        assert (c.tp, c.fp, c.fn) == (tp, fp, fn), image
        assert (c.precision, c.recall, c.f1) == (p, r, f1), image  # bit for bit


def test_sn2_sample_totals_and_per_aoi() -> None:
    result = sn2()
    assert result.total == Counts(87, 57, 82)
    assert result.total.precision == 87 / 144
    assert result.total.recall == 87 / 169
    assert result.total.f1 == pytest.approx(0.5559105431309903, abs=1e-15)
    # solaris sums the per-image counts per AOI (spacenet_buildings2_dataset.py)
    vegas = aggregate(result.per_image, [k for k in result.per_image if "Vegas" in str(k)])
    assert vegas == Counts(35, 2, 7)
    khartoum = aggregate(result.per_image, [k for k in result.per_image if "Khartoum" in str(k)])
    assert khartoum == Counts(52, 55, 75)
    assert len(result.matches[0]) == 87 and np.all(result.matches[2] >= 0.5)


def test_geojson_fixture_is_exactly_solaris() -> None:
    gt = gpd.read_file(METRICS / "gt.geojson")
    pred = gpd.read_file(METRICS / "pred.geojson")
    result = spacenet_f1(pred.geometry.values, pred["conf"].to_numpy(), gt.geometry.values)
    t = result.total
    assert (t.tp, t.fp, t.fn) == (8, 20, 20)
    assert t.precision == t.recall == t.f1 == 0.2857142857142857


def test_no_iou_in_the_fixtures_sits_exactly_on_the_threshold() -> None:
    # so ">= 0.5" (SpaceNet utilities) and "> 0.5" (solaris) give the same published figures
    truth = read_spacenet_csv(METRICS / "SN2_sample_truth.csv")
    pred = read_spacenet_csv(METRICS / "SN2_sample_preds.csv")
    pairs = polygon_ious(pred.geometry, truth.geometry, pred.image_id, truth.image_id)
    assert not np.any(pairs.iou == 0.5) and len(pairs) > 100


def test_threshold_inclusive_by_default_strict_like_solaris() -> None:
    truth = np.array([shapely.box(0, 0, 2, 1)])
    pred = np.array([shapely.box(0, 0, 1, 1)])  # IoU exactly 0.5
    assert spacenet_f1(pred, None, truth).total == Counts(1, 0, 0)
    assert spacenet_f1(pred, None, truth, strict=True).total == Counts(0, 1, 1)


def test_highest_confidence_first_then_highest_iou() -> None:
    truth = np.array([shapely.box(0, 0, 10, 10)])
    weak = shapely.box(0, 0, 10, 6)  # IoU 0.6
    strong = shapely.box(0, 0, 10, 9)  # IoU 0.9
    # the more confident proposal takes the building even though the other fits it better
    r = spacenet_f1(np.array([strong, weak]), np.array([0.1, 0.9]), truth)
    assert r.total == Counts(1, 1, 0) and r.matches[0].tolist() == [1]
    # one proposal, two buildings: it takes the one it overlaps most
    truths = np.array([shapely.box(0, 0, 10, 6), shapely.box(0, 0, 10, 9)])
    r = spacenet_f1(np.array([shapely.box(0, 0, 10, 10)]), None, truths)
    assert r.matches[1].tolist() == [1]


def test_empty_predictions_score_zero_recall_not_a_crash() -> None:
    truth = np.array([shapely.box(0, 0, 1, 1), shapely.box(5, 5, 6, 6)])
    r = spacenet_f1(np.array([], dtype=object), None, truth)
    assert r.total == Counts(0, 0, 2)
    assert (r.total.precision, r.total.recall, r.total.f1) == (0.0, 0.0, 0.0)


def test_empty_image_rows_mean_no_buildings(tmp_path) -> None:
    csv = tmp_path / "truth.csv"
    csv.write_text(
        "ImageId,BuildingId,PolygonWKT_Pix,PolygonWKT_Geo\n"
        "img1,-1,POLYGON EMPTY,POLYGON EMPTY\n"
        'img2,1,"POLYGON ((0 0 0,10 0 0,10 10 0,0 10 0,0 0 0))",POLYGON EMPTY\n'
    )
    truth = read_spacenet_csv(csv)
    assert truth.geometry[0].is_empty and truth.geometry[1].area == 100
    pred = np.array([shapely.box(0, 0, 10, 10), shapely.box(0, 0, 10, 10)])
    r = spacenet_f1(
        pred,
        None,
        truth.geometry,
        pred_image=np.array(["img1", "img2"], dtype=object),
        truth_image=truth.image_id,
    )
    assert r.per_image["img1"] == Counts(0, 1, 0)
    assert r.per_image["img2"] == Counts(1, 0, 0)


def test_csv_errors_name_the_row(tmp_path) -> None:
    from open_buildings.errors import EvaluationError

    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,BuildingId,PolygonWKT_Pix\nimg,1,POINT (1 2)\n")
    with pytest.raises(EvaluationError, match="row 2 .*Point"):
        read_spacenet_csv(bad)
    bad.write_text("ImageId,Polygon\nimg,x\n")
    with pytest.raises(EvaluationError, match="missing column"):
        read_spacenet_csv(bad)
    bad.write_text("ImageId,BuildingId,PolygonWKT_Pix\nimg,1,POLYGON ((0 0\n")
    with pytest.raises(EvaluationError, match="row 2"):
        read_spacenet_csv(bad)
