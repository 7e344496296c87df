"""Reading PRED/TRUTH: formats, repairs, CRS alignment, clipping, and bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from evalref import METRICS

from open_buildings.errors import EvaluationError
from open_buildings.evaluation import io, region_clip
from open_buildings.evaluation.evaluate import evaluate
from open_buildings.geo import footprints as geo_footprints

NAIROBI = Path(__file__).resolve().parents[1] / "data" / "labels" / "nairobi_ke.geojson"


def write_geojson(path: Path, features: list[dict], crs: str | None = None) -> Path:
    doc: dict = {"type": "FeatureCollection", "features": features}
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return path


def feature(coords: list, **props: object) -> dict:
    return {
        "type": "Feature",
        "properties": props,
        "geometry": {"type": "Polygon", "coordinates": [coords]},
    }


def test_geojson_in_utm_is_kept_in_its_crs() -> None:
    pred, truth = io.read_pair(METRICS / "pred.geojson", METRICS / "gt.geojson")
    p, t, crs = io.to_common_crs(pred, truth)
    assert crs.to_epsg() == 32616 and len(p) == len(t) == 28
    assert p.score is not None and np.all(p.score == 1)


def test_lonlat_truth_goes_to_utm_and_a_crs_mismatch_is_reprojected_with_a_warning(
    tmp_path: Path,
) -> None:
    truth = io.read_instances(NAIROBI)
    assert truth.crs.to_epsg() == 4326
    metric = io.metric_crs(truth)
    assert metric.to_epsg() == 32737  # Nairobi: UTM 37S
    moved = gpd.GeoSeries(truth.geometry, crs=4326).to_crs(3857)
    pred_file = tmp_path / "pred.geojson"
    gpd.GeoDataFrame({"confidence": np.linspace(0.5, 1, len(moved))}, geometry=moved).to_file(
        pred_file
    )
    pred = io.read_instances(pred_file)
    assert pred.crs.to_epsg() == 3857
    with pytest.warns(io.EvaluationWarning, match="EPSG:3857 and TRUTH in EPSG:4326.*EPSG:32737"):
        p, t, crs = io.to_common_crs(pred, truth)
    ev = evaluate(p, t)
    assert ev.f1.total.tp == len(t) and ev.f1.total.fp == 0  # the same buildings, found again
    assert np.all(ev.f1.matches[2] > 0.999)


def test_invalid_polygon_is_repaired_with_a_warning_naming_it(tmp_path: Path) -> None:
    bowtie = [[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]
    square = [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]
    path = write_geojson(tmp_path / "t.geojson", [feature(square), feature(bowtie)], "EPSG:32637")
    with pytest.warns(io.EvaluationWarning, match="1 invalid polygon.*feature 1"):
        fp = io.read_instances(path, role="TRUTH")
    assert np.all(shapely.is_valid(fp.geometry)) and fp.geometry[1].area == pytest.approx(0.5)


def test_non_polygon_feature_is_rejected_by_name(tmp_path: Path) -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            feature([[0, 0], [1, 0], [1, 1], [0, 0]]),
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Point", "coordinates": [0, 0]},
            },
        ],
    }
    path = tmp_path / "p.geojson"
    path.write_text(json.dumps(doc))
    with pytest.raises(EvaluationError, match="feature 1 is a Point"):
        io.read_instances(path, role="PRED")


def test_crowd_regions_are_refused(tmp_path: Path) -> None:
    path = write_geojson(
        tmp_path / "c.geojson", [feature([[0, 0], [1, 0], [1, 1], [0, 0]], iscrowd=1)]
    )
    with pytest.raises(EvaluationError, match="crowd"):
        io.read_instances(path)


def test_no_overlap_warns_and_scores_zero(tmp_path: Path) -> None:
    far = [[x + 1000, y] for x, y in [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]
    near = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    p = io.read_instances(
        write_geojson(tmp_path / "p.geojson", [feature(far, confidence=0.9)], "EPSG:32637")
    )
    t = io.read_instances(write_geojson(tmp_path / "t.geojson", [feature(near)], "EPSG:32637"))
    with pytest.warns(io.EvaluationWarning, match="do not overlap at all"):
        ev = evaluate(p, t)
    assert ev.f1.total.recall == 0 and ev.coco.ap == 0


def test_empty_predictions_give_zero_recall(tmp_path: Path) -> None:
    p = io.read_instances(write_geojson(tmp_path / "p.geojson", [], "EPSG:32637"))
    t = io.read_instances(
        write_geojson(
            tmp_path / "t.geojson", [feature([[0, 0], [9, 0], [9, 9], [0, 0]])], "EPSG:32637"
        )
    )
    p, t, _ = io.to_common_crs(p, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = evaluate(p, t)
    assert ev.f1.total.recall == 0.0 and ev.f1.total.fn == 1 and ev.coco.ap == 0.0
    assert all(x.threshold is None for x in ev.thresholds)


def test_footprint_folder_is_read_with_confidence(tmp_path: Path) -> None:
    labels = gpd.read_file(NAIROBI)
    centre = labels.to_crs(32737).centroid.to_crs(4326)
    labels["latitude"], labels["longitude"] = centre.y, centre.x
    labels["area_in_meters"] = labels.to_crs(32737).area
    labels["confidence"] = 0.8
    folder = tmp_path / "fp"
    folder.mkdir()
    geo_footprints.write_csv_gz(geo_footprints.to_schema(labels), folder / "a_buildings.csv.gz")
    fp = io.read_instances(folder)
    assert len(fp) == len(labels) and np.all(fp.score == 0.8) and fp.image_id is None


def test_pixels_cannot_meet_lonlat_without_a_geo_column(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text('ImageId,BuildingId,PolygonWKT_Pix\nimg,1,"POLYGON ((0 0,1 0,1 1,0 0))"\n')
    with pytest.raises(EvaluationError, match="PolygonWKT_Geo"):
        io.read_pair(csv, NAIROBI)


def test_spacenet_csv_read_through_its_geo_column_against_lonlat() -> None:
    pred, truth = io.read_pair(METRICS / "SN2_sample_truth.csv", METRICS / "SN2_sample_truth.csv")
    assert pred.crs is None and truth.crs is None


def test_clip_cuts_polygons_at_the_region_edge() -> None:
    fp = io.Footprints(
        np.array([shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10), shapely.box(8, 0, 12, 2)]),
        np.array([0.1, 0.2, 0.3]),
        None,
        None,
        "x",
        np.array(["a", "b", "c"], dtype=object),
    )
    out = region_clip.clip(fp, shapely.box(0, 0, 10, 10))
    assert out.names.tolist() == ["a", "c"]
    assert out.geometry[1].equals(shapely.box(8, 0, 10, 2))
    assert out.score.tolist() == [0.1, 0.3]
