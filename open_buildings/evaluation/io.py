"""Read predictions and truth (footprint folders, GeoJSON, SpaceNet CSV) into one planar CRS.

Polygons are never compared in degrees: both sides are brought to one metric CRS (the truth's
own, if it is projected in metres; otherwise the UTM zone of the truth's centre). A PRED and a
TRUTH in different CRSs are reprojected with a warning that says so. SpaceNet CSVs are read in
pixel coordinates (``PolygonWKT_Pix``, as the SpaceNet scorers do); they can be compared with
each other, or, through ``PolygonWKT_Geo``, with georeferenced files.

Bad input: invalid polygons are repaired with ``shapely.make_valid`` and a warning naming them;
a feature that is not a polygon is rejected with an error naming it; crowd regions are refused.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.spacenet import read_spacenet_csv
from open_buildings.geo import grid
from open_buildings.geo.shard_read import SkipLog, non_finite, read_footprints

#: Property names read as a prediction's confidence, in order of preference.
SCORE_FIELDS = ("confidence", "Confidence", "score", "conf")
#: Property names read as an image id.
IMAGE_FIELDS = ("ImageId", "image_id")
#: Largest GeoJSON read (bytes); checked before reading.
MAX_GEOJSON_BYTES = 2_000_000_000


class EvaluationWarning(UserWarning):
    """Something about the inputs that changes how they are scored (repairs, reprojection...)."""


@dataclass(frozen=True)
class Footprints:
    """Polygons to evaluate, with what the metrics need.

    Attributes:
        geometry: Polygons or MultiPolygons (shapely), possibly empty (an image with no buildings).
        score: Confidence of each polygon, or None if the source has none.
        image_id: Image id of each polygon, or None (the whole input is one area).
        crs: The coordinate reference system, or None for pixel coordinates.
        source: Where it was read from.
        names: A name for each feature, used in messages ("feature 3", "row 12").
    """

    geometry: np.ndarray
    score: np.ndarray | None
    image_id: np.ndarray | None
    crs: CRS | None
    source: str
    names: np.ndarray

    def __len__(self) -> int:
        return len(self.geometry)

    def take(self, index: np.ndarray) -> Footprints:
        """Return the features at ``index`` (an integer or boolean array)."""
        return replace(
            self,
            geometry=self.geometry[index],
            score=None if self.score is None else self.score[index],
            image_id=None if self.image_id is None else self.image_id[index],
            names=self.names[index],
        )


def concat(parts: list[Footprints]) -> Footprints:
    """Join footprints of several areas (each keeps its image ids; the first one's CRS is kept).

    Raises:
        ValueError: scores are present in some parts and missing in others.
    """
    scored = {p.score is not None for p in parts}
    if len(scored) > 1:
        raise ValueError("some inputs have confidence scores and others do not")
    has_ids = all(p.image_id is not None for p in parts)
    return Footprints(
        geometry=np.concatenate([p.geometry for p in parts]),
        score=np.concatenate([p.score for p in parts]) if scored == {True} else None,
        image_id=np.concatenate([p.image_id for p in parts]) if has_ids else None,
        crs=parts[0].crs,
        source=", ".join(p.source for p in parts),
        names=np.concatenate([p.names for p in parts]),
    )


def read_instances(
    path: str | os.PathLike,
    *,
    role: str = "input",
    wkt_column: str = "PolygonWKT_Pix",
    skip_bad: bool = False,
) -> Footprints:
    """Read footprints from a footprint folder or file, a GeoJSON file, or a SpaceNet CSV.

    Args:
        path: A folder (or file) of Open Buildings ``.csv.gz`` / ``.parquet`` shards, a
            ``.geojson`` / ``.json`` file, or a SpaceNet ``.csv``.
        role: "PRED" or "TRUTH", used in messages.
        wkt_column: For a SpaceNet CSV, the WKT column to read (``PolygonWKT_Geo`` for lon/lat).
        skip_bad: Skip damaged shard rows/files and polygons with NaN or infinite vertices
            (with a warning) instead of raising.

    Returns:
        The footprints, repaired where invalid.

    Raises:
        EvaluationError: If the input cannot be read, holds non-polygons, or has crowd regions.
    """
    src = Path(path)
    if not src.exists():
        raise EvaluationError(
            f"{role} {src} does not exist; give a footprint folder, a GeoJSON "
            "file or a SpaceNet CSV"
        )
    name = src.name.lower()
    if src.is_dir() or name.endswith((".csv.gz", ".parquet")):
        out = _read_folder(src, role, skip_bad)
    elif name.endswith((".geojson", ".json")):
        out = _read_geojson(src, role)
    elif name.endswith(".csv"):
        out = _read_spacenet(src, wkt_column)
    else:
        raise EvaluationError(
            f"{role} {src}: unknown format; give a footprint folder (.csv.gz / .parquet shards), "
            "a .geojson file or a SpaceNet .csv"
        )
    return repair(drop_unreadable(out, role=role, skip_bad=skip_bad), role=role)


def drop_unreadable(fp: Footprints, *, role: str = "input", skip_bad: bool = False) -> Footprints:
    """Refuse (or, ``skip_bad``, drop with a warning) geometries that are missing or not finite.

    ``shapely.make_valid`` cannot repair them (GEOS raises), and no metric can use them.
    """
    bad = non_finite(fp.geometry) if len(fp) else np.zeros(0, bool)
    if not bad.any():
        return fp
    where = np.flatnonzero(bad)
    listed = ", ".join(fp.names[where[:5]]) + (" ..." if len(where) > 5 else "")
    what = f"{role} {fp.source}: {len(where)} footprint(s) have no usable polygon"
    if not skip_bad:
        raise EvaluationError(
            f"{what} (none, or a NaN or infinite vertex): {listed}; fix them, or pass "
            "--skip-bad to leave them out with a warning"
        )
    warnings.warn(
        f"--skip-bad: {role} {fp.source}: left out {len(where)} footprint(s) with no usable "
        f"polygon: {listed}",
        EvaluationWarning,
        stacklevel=2,
    )
    return fp.take(~bad)


def _read_folder(src: Path, role: str = "input", skip_bad: bool = False) -> Footprints:
    skipped = SkipLog()
    try:
        frame = read_footprints(src, skip_bad=skip_bad, skipped=skipped)
    except (OSError, ValueError) as e:
        raise EvaluationError(f"{role} {src}: cannot read footprints ({e})") from e
    if skipped.rows or skipped.files:
        warnings.warn(
            f"--skip-bad: {role} {src}: left out {skipped.rows:,} damaged row(s) and "
            f"{len(skipped.files)} damaged file(s): " + "; ".join(skipped.reasons),
            EvaluationWarning,
            stacklevel=2,
        )
    geoms = np.asarray(frame.geometry.values, dtype=object)
    return Footprints(
        geoms,
        frame["confidence"].to_numpy(dtype=np.float64),
        None,
        CRS.from_epsg(4326),
        str(src),
        np.array([f"row {i}" for i in range(len(geoms))], dtype=object),
    )


def _read_geojson(src: Path, role: str) -> Footprints:
    size = src.stat().st_size
    if size > MAX_GEOJSON_BYTES:
        raise EvaluationError(
            f"{src}: {size:,} bytes is more than the {MAX_GEOJSON_BYTES:,} allowed"
        )
    try:
        frame = gpd.read_file(src)
    except Exception as e:  # pyogrio raises its own DataSourceError and friends
        raise EvaluationError(f"{role} {src}: not readable as GeoJSON ({e})") from e
    names = np.array([f"feature {i}" for i in range(len(frame))], dtype=object)
    if "iscrowd" in frame.columns and frame["iscrowd"].fillna(0).astype(bool).any():
        raise EvaluationError(
            f"{role} {src}: has crowd regions (iscrowd=1); building evaluation has no crowd "
            "regions, so remove them (pycocotools would let them absorb detections)"
        )
    geoms = np.asarray(frame.geometry.values, dtype=object)
    for i, g in enumerate(geoms):
        if g is None:
            raise EvaluationError(f"{role} {src}: {names[i]} has no geometry; remove it")
        if g.geom_type not in ("Polygon", "MultiPolygon"):
            raise EvaluationError(
                f"{role} {src}: {names[i]} is a {g.geom_type}, not a footprint polygon; "
                "remove it or give its outline"
            )
    score = None
    for field in SCORE_FIELDS:
        if field in frame.columns:
            score = frame[field].to_numpy(dtype=np.float64)
            break
    image_id = None
    for field in IMAGE_FIELDS:
        if field in frame.columns:
            image_id = frame[field].astype(str).to_numpy(dtype=object)
            break
    crs = CRS.from_user_input(frame.crs) if frame.crs is not None else CRS.from_epsg(4326)
    return Footprints(shapely.force_2d(geoms), score, image_id, crs, str(src), names)


def _read_spacenet(src: Path, column: str) -> Footprints:
    table = read_spacenet_csv(src, column=column)
    names = np.array(
        [
            f"row {i + 2} (ImageId {a}, BuildingId {b})"
            for i, (a, b) in enumerate(zip(table.image_id, table.building_id))
        ],
        dtype=object,
    )
    crs = CRS.from_epsg(4326) if column == "PolygonWKT_Geo" else None
    return Footprints(table.geometry, table.confidence, table.image_id, crs, str(src), names)


def repair(fp: Footprints, *, role: str = "input") -> Footprints:
    """Repair invalid polygons with ``shapely.make_valid``, warning with their names.

    Only the polygonal parts of a repair are kept; a feature left with no area is dropped, and
    the warning says so.

    Args:
        fp: The footprints.
        role: "PRED" or "TRUTH", used in the warning.

    Returns:
        The footprints, every geometry valid.
    """
    bad = np.flatnonzero(~shapely.is_valid(fp.geometry)) if len(fp) else np.zeros(0, int)
    if len(bad) == 0:
        return fp
    geoms = fp.geometry.copy()
    dropped = []
    for i in bad:
        fixed = polygonal(shapely.make_valid(geoms[i]))
        geoms[i] = fixed
        if fixed.is_empty:
            dropped.append(i)
    listed = ", ".join(fp.names[bad[:5]]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    msg = f"{role} {fp.source}: {len(bad)} invalid polygon(s) repaired with make_valid: {listed}"
    if dropped:
        msg += f"; {len(dropped)} had no area left and were dropped"
    warnings.warn(msg, EvaluationWarning, stacklevel=2)
    out = replace(fp, geometry=geoms)
    if dropped:
        keep = np.ones(len(fp), dtype=bool)
        keep[dropped] = False
        out = out.take(keep)
    return out


def polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """The polygonal parts of a geometry (an empty polygon when it has none)."""
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return shapely.Polygon()
    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def read_pair(
    pred_path: str | os.PathLike, truth_path: str | os.PathLike, *, skip_bad: bool = False
) -> tuple[Footprints, Footprints]:
    """Read PRED and TRUTH so that they can be compared.

    A SpaceNet CSV is read in pixels; if the other side is georeferenced, the CSV's
    ``PolygonWKT_Geo`` column is read instead (and an error raised if it has none).

    Args:
        pred_path: Predictions.
        truth_path: Ground truth.
        skip_bad: Skip damaged rows, files and polygons with a warning (:func:`read_instances`).

    Returns:
        ``(pred, truth)``, not yet in a common CRS (see :func:`to_common_crs`).

    Raises:
        EvaluationError: If either cannot be read, or pixels meet lon/lat with no way across.
    """
    pred = read_instances(pred_path, role="PRED", skip_bad=skip_bad)
    truth = read_instances(truth_path, role="TRUTH", skip_bad=skip_bad)
    if (pred.crs is None) != (truth.crs is None):
        pix_path, role = (pred_path, "PRED") if pred.crs is None else (truth_path, "TRUTH")
        try:
            geo = read_instances(
                pix_path, role=role, wkt_column="PolygonWKT_Geo", skip_bad=skip_bad
            )
        except EvaluationError as e:
            raise EvaluationError(
                f"{role} {pix_path} is in pixel coordinates and the other input is "
                f"georeferenced, and it has no usable PolygonWKT_Geo column ({e}); "
                "give both in pixels or both georeferenced"
            ) from e
        pred, truth = (geo, truth) if role == "PRED" else (pred, geo)
    return pred, truth


def metric_crs(fp: Footprints) -> CRS:
    """Pick a metric CRS for some footprints: their own if projected in metres, else UTM.

    Args:
        fp: Georeferenced footprints (``crs`` not None).

    Returns:
        A projected CRS in metres.
    """
    if fp.crs is None:
        raise EvaluationError(f"{fp.source} is in pixel coordinates and has no CRS")
    crs = fp.crs
    if crs.is_projected and crs.axis_info and crs.axis_info[0].unit_name in ("metre", "meter"):
        return crs
    geoms = fp.geometry[~shapely.is_empty(fp.geometry)] if len(fp) else fp.geometry
    if len(geoms) == 0:
        return CRS.from_epsg(3857)  # nothing to compare; any metric CRS will do
    lonlat = gpd.GeoSeries(geoms, crs=crs).to_crs(4326)
    west, south, east, north = lonlat.total_bounds
    return CRS.from_user_input(grid.utm_crs((west + east) / 2, (south + north) / 2))


def to_crs(fp: Footprints, crs: CRS | None) -> Footprints:
    """Reproject footprints (no-op if already in ``crs``).

    Args:
        fp: The footprints.
        crs: Target CRS; None only if ``fp`` is in pixels too.

    Returns:
        The footprints in ``crs``.
    """
    if crs is None or fp.crs is None:
        if crs is not fp.crs:
            raise EvaluationError("cannot reproject between pixel and map coordinates")
        return fp
    if fp.crs == crs or len(fp) == 0:
        return replace(fp, crs=crs)
    moved = gpd.GeoSeries(fp.geometry, crs=fp.crs).to_crs(crs)
    return replace(fp, geometry=np.asarray(moved.values, dtype=object), crs=crs)


def to_common_crs(pred: Footprints, truth: Footprints) -> tuple[Footprints, Footprints, CRS | None]:
    """Bring PRED and TRUTH into one metric CRS (or leave both in pixels).

    A CRS mismatch is never compared silently: both are reprojected, with a warning naming the
    three CRSs.

    Args:
        pred: Predictions.
        truth: Ground truth.

    Returns:
        ``(pred, truth, crs)``; ``crs`` is None when both are in pixels.

    Raises:
        EvaluationError: If one side is in pixels and the other is not.
    """
    if pred.crs is None and truth.crs is None:
        return pred, truth, None
    if pred.crs is None or truth.crs is None:
        raise EvaluationError(
            "PRED and TRUTH mix pixel coordinates and map coordinates; give both in one kind"
        )
    crs = metric_crs(truth if len(truth) else pred)
    if pred.crs != truth.crs:
        warnings.warn(
            f"PRED is in {crs_name(pred.crs)} and TRUTH in {crs_name(truth.crs)}: "
            f"both reprojected to {crs_name(crs)} before comparing",
            EvaluationWarning,
            stacklevel=2,
        )
    return to_crs(pred, crs), to_crs(truth, crs), crs


def crs_name(crs: CRS | None) -> str:
    """Return a short name for a CRS ("EPSG:32616"), or "pixels" for None."""
    if crs is None:
        return "pixels"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name
