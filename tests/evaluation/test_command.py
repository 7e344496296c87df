"""ob-eval end to end on the real fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from evalref import METRICS

from open_buildings.commands import evaluate as ob_eval

SAMPLE_REGION = Path(__file__).resolve().parents[2] / "geo" / "sample" / "region.geojson"


def test_ob_eval_on_the_spacenet_csvs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    argv = [
        "--pred",
        str(METRICS / "SN2_sample_preds.csv"),
        "--truth",
        str(METRICS / "SN2_sample_truth.csv"),
        "--out",
        str(out),
        "--min-area",
        "20",
    ]
    assert ob_eval.main(argv) == 0
    text = capsys.readouterr().out
    assert "F1 0.5559" in text and "TP 87  FP 57  FN 82" in text
    assert len(text.splitlines()) < 30  # one screen
    assert sorted(p.name for p in out.iterdir()) == [
        "iou_hist.png",
        "metrics.json",
        "pr_curve.png",
        "report.md",
    ]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["spacenet"]["total"]["tp"] == 87
    assert doc["spacenet"]["per_image"]["AOI_2_Vegas_img3457"]["f1"] == 0.8749999999999999
    assert doc["coco"]["max_dets_per_image"] == 100 and 0 < doc["coco"]["AP"] < 1
    assert [p["target_precision"] for p in doc["precision_thresholds"]] == [0.8, 0.85, 0.9]
    assert "| 87 | 57 | 82 |" in (out / "report.md").read_text()
    for png in ("pr_curve.png", "iou_hist.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # never overwrites a non-empty folder unless asked
    assert ob_eval.main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert ob_eval.main([*argv, "--overwrite"]) == 0


def test_ob_eval_geojson_and_region_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    argv = [
        "--pred",
        str(METRICS / "pred.geojson"),
        "--truth",
        str(METRICS / "gt.geojson"),
        "--out",
        str(out),
    ]
    assert ob_eval.main(argv) == 0
    assert "TP 8  FP 20  FN 20" in capsys.readouterr().out
    # a region far away (Nairobi) clips everything out: a clear result, not a crash
    assert ob_eval.main([*argv, "--overwrite", "--region", str(SAMPLE_REGION)]) == 0
    assert "0 predictions vs 0 truth" in capsys.readouterr().out
    # pixel coordinates cannot be clipped to a lon/lat region
    px = [
        "--pred",
        str(METRICS / "SN2_sample_preds.csv"),
        "--truth",
        str(METRICS / "SN2_sample_truth.csv"),
        "--out",
        str(tmp_path / "px"),
        "--region",
        str(SAMPLE_REGION),
    ]
    assert ob_eval.main(px) == 2
    assert "--region needs georeferenced inputs" in capsys.readouterr().err
    assert (
        ob_eval.main(["--pred", "nope.geojson", "--truth", "x", "--out", str(tmp_path / "n")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_ob_eval_region_clip_keeps_what_is_inside(tmp_path: Path, capsys) -> None:
    # a lon/lat box over the gt.geojson buildings (UTM 16N), read back through the region reader
    import geopandas as gpd

    gt = gpd.read_file(METRICS / "gt.geojson").to_crs(4326)
    w, s, e, n = gt.total_bounds
    region = tmp_path / "region.geojson"
    region.write_text(
        json.dumps(
            {
                "type": "Polygon",
                "coordinates": [[[w, s], [(w + e) / 2, s], [(w + e) / 2, n], [w, n], [w, s]]],
            }
        )
    )
    argv = [
        "--pred",
        str(METRICS / "pred.geojson"),
        "--truth",
        str(METRICS / "gt.geojson"),
        "--out",
        str(tmp_path / "o"),
        "--region",
        str(region),
    ]
    assert ob_eval.main(argv) == 0
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert 0 < doc["n_truth"] < 28


def test_areas_are_pooled_and_matched_only_within_themselves() -> None:
    from open_buildings.evaluation.evaluate import evaluate_areas, evaluate_files

    pred, gt = str(METRICS / "pred.geojson"), str(METRICS / "gt.geojson")
    one = evaluate_files(pred, gt)
    # the same area twice: identical polygons in both, but area 0's never match area 1's
    two = evaluate_areas([(pred, gt, None), (pred, gt, None)])
    assert (one.f1.total.tp, one.f1.total.fp, one.f1.total.fn) == (8, 20, 20)
    assert (two.f1.total.tp, two.f1.total.fp, two.f1.total.fn) == (16, 40, 40)
    assert sorted(two.f1.per_image) == [0, 1]
    assert two.n_truth == 2 * one.n_truth and two.f1.total.f1 == one.f1.total.f1
    assert two.coco.ap50 == pytest.approx(one.coco.ap50, abs=0.02)


def test_by_centroid_scores_a_region_as_ob_infer_writes_it(tmp_path: Path) -> None:
    """ob-infer writes a region's buildings by centroid; cutting only the truth at the region's
    edge would count the slivers of the buildings it leaves to the neighbour as missed."""
    import geopandas as gpd
    import shapely

    from open_buildings.evaluation.evaluate import evaluate_areas

    labels = gpd.read_file(Path(__file__).parents[1] / "data" / "labels" / "nairobi_ke.geojson")
    labels = labels.to_crs(4326)
    west, south, east, north = labels.total_bounds
    points = shapely.centroid(labels.geometry.values)

    def cut_through(x: float) -> int:  # buildings the edge x crosses, centroid outside
        return int(
            (
                shapely.intersects(labels.geometry.values, shapely.box(west, south, x, north))
                & (shapely.get_x(points) > x)
            ).sum()
        )

    x = max(sorted(shapely.get_x(points) - 1e-6), key=cut_through)
    region = shapely.box(west, south, x, north)
    region_path = tmp_path / "region.geojson"
    region_path.write_text(json.dumps(shapely.geometry.mapping(region)))
    owned = shapely.intersects_xy(region, shapely.get_x(points), shapely.get_y(points))
    crossing = shapely.intersects(labels.geometry.values, region.boundary)
    assert (crossing & ~owned).sum() >= 3  # the slivers this test is about
    written = labels[owned].assign(confidence=0.9)  # a perfect model's ob-infer output
    written.to_file(tmp_path / "pred.geojson", driver="GeoJSON")
    truth = str(Path(__file__).parents[1] / "data" / "labels" / "nairobi_ke.geojson")
    area = [(str(tmp_path / "pred.geojson"), truth, str(region_path))]

    cut = evaluate_areas(area)
    assert cut.f1.total.fn >= 3 and cut.f1.total.f1 < 1.0
    fair = evaluate_areas(area, by_centroid=True)
    assert fair.n_truth == int(owned.sum())
    assert (fair.f1.total.fn, fair.f1.total.fp) == (0, 0)
    argv = ["--pred", area[0][0], "--truth", truth, "--region", str(region_path)]
    assert ob_eval.main([*argv, "--region-rule", "centroid", "--out", str(tmp_path / "e")]) == 0
    doc = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert doc["n_truth"] == int(owned.sum()) and doc["spacenet"]["total"]["f1"] == 1.0
