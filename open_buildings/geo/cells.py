"""S2 cells (tile ids and output shards) and Plus Codes (the ``full_plus_code`` column).

S2 comes from ``s2geometry``, Google's own C++ library with its official Python bindings: the same
cell ids, tokens and region coverer that the Open Buildings release and BigQuery use, so tokens
written here match those of other tools exactly. Plus Codes come from ``openlocationcode``, Google's
reference implementation. Both are called once per point; neither offers a vectorized API.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import s2geometry as s2
import shapely
import shapely.affinity
from openlocationcode import openlocationcode as olc

MAX_LEVEL = 30
PLUS_CODE_LENGTH = 12  # as in the published Open Buildings files, e.g. "7F2H7664+QG4P"


def _check_level(level: int) -> None:
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"S2 level must be between 0 and {MAX_LEVEL}, got {level}")


def cell_ids(lon: Iterable[float], lat: Iterable[float], level: int = MAX_LEVEL) -> np.ndarray:
    """Return the S2 cell id (uint64) that contains each point, at ``level``.

    Leaf ids (level 30) sort along S2's Hilbert curve, so they order rows spatially.

    Args:
        lon: longitudes in degrees.
        lat: latitudes in degrees.
        level: the S2 level, 0 (faces) to 30 (about 1 cm).
    """
    _check_level(level)
    lon_a = np.asarray(lon, dtype=float).ravel()
    lat_a = np.asarray(lat, dtype=float).ravel()
    if lon_a.shape != lat_a.shape:
        raise ValueError(f"lon and lat differ in length: {lon_a.size} != {lat_a.size}")
    out = np.empty(lon_a.size, dtype=np.uint64)
    for i, (x, y) in enumerate(zip(lon_a.tolist(), lat_a.tolist())):
        cell = s2.S2CellId(s2.S2LatLng.FromDegrees(y, x))
        if level != MAX_LEVEL:
            cell = cell.parent(level)
        out[i] = cell.id()
    return out


def cell_tokens(lon: Iterable[float], lat: Iterable[float], level: int) -> np.ndarray:
    """Return the S2 cell token (e.g. ``"10ffd034"``) that contains each point, at ``level``.

    Args:
        lon: longitudes in degrees.
        lat: latitudes in degrees.
        level: the S2 level of the tokens.
    """
    ids = cell_ids(lon, lat, level)
    return np.array([token_of(int(i)) for i in ids], dtype=object)


def cell_token(lon: float, lat: float, level: int) -> str:
    """Return the token of the S2 cell at ``level`` that contains one point."""
    return str(cell_tokens([lon], [lat], level)[0])


def token_of(cell_id: int) -> str:
    """Return the token of an S2 cell id."""
    return s2.S2CellId(int(cell_id)).ToToken()


def parse_token(token: str) -> s2.S2CellId:
    """Parse an S2 token, raising ``ValueError`` with the bad token if it is not a valid cell."""
    cell = s2.S2CellId.FromToken(token) if isinstance(token, str) else None
    if cell is None or not cell.is_valid():
        raise ValueError(f"{token!r} is not a valid S2 cell token (expected e.g. '10ffd034')")
    return cell


def token_level(token: str) -> int:
    """Return the S2 level of a token."""
    return int(parse_token(token).level())


def cell_polygon(token: str, points_per_edge: int = 8) -> shapely.Polygon | shapely.MultiPolygon:
    """Return an S2 cell's outline in lon/lat.

    S2 cell edges are geodesics, so each edge is densified along its great circle. Cells of level
    1 and above have edges *on* the antimeridian rather than across it, but a vertex there may come
    out as -180 or +180; the ring is made continuous and split at 180, so the result always lies
    within ±180 (and is a MultiPolygon only if a cell really straddles it).

    Args:
        token: the cell's token.
        points_per_edge: vertices per edge, including its start.
    """
    cell = s2.S2Cell(parse_token(token))
    corners = np.array([_xyz(cell.GetVertex(k)) for k in range(4)])
    t = np.linspace(0.0, 1.0, points_per_edge, endpoint=False)[:, None]
    edges = [(1 - t) * corners[k] + t * corners[(k + 1) % 4] for k in range(4)]
    xyz = np.concatenate(edges)
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    lon = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))
    lat = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0)))
    crosses = np.ptp(lon) > 180.0
    if crosses:
        lon = np.where(lon < 0.0, lon + 360.0, lon)  # continuous across 180
    ring = np.column_stack([lon, lat])
    polygon = shapely.orient_polygons(shapely.Polygon(np.vstack([ring, ring[:1]])))
    if not crosses:
        return polygon
    east = shapely.intersection(polygon, shapely.box(0.0, -90.0, 180.0, 90.0))
    west = shapely.affinity.translate(
        shapely.intersection(polygon, shapely.box(180.0, -90.0, 360.0, 90.0)), xoff=-360.0
    )
    parts = [p for p in (*shapely.get_parts(east), *shapely.get_parts(west)) if p.area > 0]
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def _xyz(point: s2.S2Point) -> tuple[float, float, float]:
    return (point.x(), point.y(), point.z())


def plus_codes(
    lat: Iterable[float], lon: Iterable[float], length: int = PLUS_CODE_LENGTH
) -> np.ndarray:
    """Return the full Plus Code of each point (``"7F2H7664+QG4P"`` at the default length 12).

    Args:
        lat: latitudes in degrees.
        lon: longitudes in degrees.
        length: code length in digits; 10 is about 14 m, 12 (Open Buildings) about 0.6 m.
    """
    lat_a = np.asarray(lat, dtype=float).ravel()
    lon_a = np.asarray(lon, dtype=float).ravel()
    if lon_a.shape != lat_a.shape:
        raise ValueError(f"lat and lon differ in length: {lat_a.size} != {lon_a.size}")
    return np.array(
        [olc.encode(y, x, length) for y, x in zip(lat_a.tolist(), lon_a.tolist())], dtype=object
    )
