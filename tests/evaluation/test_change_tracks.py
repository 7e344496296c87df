"""Buildings followed across dates: matching, coverage and the change labels."""

from __future__ import annotations

import datetime

import geopandas as gpd
import numpy as np
import pytest
import shapely

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.change_tracks import track_buildings

DATES = [datetime.date(2011, 5, 20), datetime.date(2011, 5, 24), datetime.date(2012, 5, 1)]
M = 1 / 111_000  # about a metre in degrees near the equator


def _box(x: float, y: float, side: float = 10, confidence: float = 0.9) -> dict:
    geom = shapely.box(x * M, y * M, (x + side) * M, (y + side) * M)
    c = geom.centroid
    return {"latitude": c.y, "longitude": c.x, "area_in_meters": side * side,
            "confidence": confidence, "geometry": geom}  # fmt: skip


def _frame(*boxes: dict) -> gpd.GeoDataFrame:
    if not boxes:
        return gpd.GeoDataFrame(
            {c: [] for c in ("latitude", "longitude", "area_in_meters", "confidence")},
            geometry=[], crs="EPSG:4326",
        )  # fmt: skip
    return gpd.GeoDataFrame(list(boxes), geometry="geometry", crs="EPSG:4326")


def _everywhere(dates: int):
    """Coverage where every date saw every point."""
    return lambda lon, lat: np.ones((dates, len(lon)), dtype=bool)


def _by(result: gpd.GeoDataFrame) -> dict[int, tuple[str, str, str]]:
    """Each building keyed by its left edge in metres."""
    left = np.rint(result.geometry.bounds["minx"].to_numpy() / M).astype(int)
    return {
        int(x): (c, f, last)
        for x, c, f, last in zip(left, result["change"], result["first_seen"], result["last_seen"])
    }


def test_kept_gone_and_new_buildings_are_told_apart() -> None:
    before = _frame(_box(0, 0), _box(100, 0), _box(200, 0))
    after = _frame(_box(1, 1), _box(200, 0, confidence=0.6), _box(300, 0))  # 0 moved 1 m
    result = track_buildings([before, after], DATES[:2], _everywhere(2))
    assert _by(result) == {
        1: ("unchanged", "2011-05-20", "2011-05-24"),  # the latest footprint is kept
        100: ("removed", "2011-05-20", "2011-05-20"),
        200: ("unchanged", "2011-05-20", "2011-05-24"),
        300: ("new", "2011-05-24", "2011-05-24"),
    }
    assert result.loc[_row(result, 200), "confidence"] == pytest.approx(0.6)


def _row(result: gpd.GeoDataFrame, left: int) -> int:
    lefts = np.rint(result.geometry.bounds["minx"].to_numpy() / M).astype(int)
    return int(np.flatnonzero(lefts == left)[0])


def test_a_footprint_that_overlaps_too_little_is_another_building() -> None:
    before, after = _frame(_box(0, 0)), _frame(_box(4, 0))  # IoU 60/140 = 0.43
    assert sorted(
        c for c, _, _ in _by(track_buildings([before, after], DATES[:2], _everywhere(2))).values()
    ) == [
        "new",
        "removed",
    ]
    loose = track_buildings([before, after], DATES[:2], _everywhere(2), iou=0.4)
    assert list(loose["change"]) == ["unchanged"]


def test_a_building_missed_at_one_date_stays_one_building() -> None:
    frames = [_frame(_box(0, 0)), _frame(), _frame(_box(0, 1))]
    result = track_buildings(frames, DATES, _everywhere(3))
    assert list(zip(result["change"], result["first_seen"], result["last_seen"])) == [
        ("unchanged", "2011-05-20", "2012-05-01")
    ]


def test_no_change_is_claimed_where_a_date_saw_nothing() -> None:
    def west_only_after(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return np.stack([np.ones(len(lon), dtype=bool), lon < 50 * M])

    before = _frame(_box(0, 0), _box(100, 0))
    after = _frame(_box(0, 0))
    result = _by(track_buildings([before, after], DATES[:2], west_only_after))
    assert result[100][0] == "unchanged"  # the after imagery never covered it
    assert result[0][0] == "unchanged"
    result = _by(track_buildings([before, after], DATES[:2], _everywhere(2)))
    assert result[100][0] == "removed"


def test_a_building_that_came_and_went_is_removed_and_says_when_it_came() -> None:
    frames = [_frame(), _frame(_box(0, 0)), _frame()]
    result = track_buildings(frames, DATES, _everywhere(3))
    assert list(zip(result["change"], result["first_seen"], result["last_seen"])) == [
        ("removed", "2011-05-24", "2011-05-24")
    ]


def test_one_date_or_mismatched_inputs_are_refused() -> None:
    with pytest.raises(EvaluationError, match="at least two dates"):
        track_buildings([_frame(_box(0, 0))], DATES[:1], _everywhere(1))
    with pytest.raises(EvaluationError, match="one frame per date"):
        track_buildings([_frame(), _frame()], DATES, _everywhere(3))


def test_no_buildings_at_any_date_gives_an_empty_table() -> None:
    result = track_buildings([_frame(), _frame()], DATES[:2], _everywhere(2))
    assert result.empty and {"change", "first_seen", "last_seen"} <= set(result.columns)
