"""The tiling grid: S2 cells at a fixed level are the tiles' cores.

Cores partition the earth exactly (every point lies in one S2 cell per level), whatever the UTM
zone, near the poles and across the antimeridian. Each tile is read on a 50 cm grid in the UTM zone
of its centre, with a margin around its core so that a building cut by the core's edge is seen
whole; a footprint is kept by the tile that owns its centroid (``Tile.owns``): it is written once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import s2geometry as s2
import shapely
from affine import Affine
from pyproj import Transformer

from open_buildings.geo import cells

# Region edges are straight lines in lon/lat (RFC 7946) but S2 edges are geodesics; the region is
# densified to this spacing first, so the two agree to well under a metre.
_DENSIFY_DEG = 0.01
# Polygons wider than this (degrees of longitude) go to S2 in bands of at most this width.
_MAX_BAND_DEG = 90.0
#: Regions of more parts than this go to S2 in batches of this many nearby parts.
_BATCH_PARTS = 128
#: Tiles are enumerated in chunks: the S2 cells this many levels above the tile level.
CHUNK_LEVELS = 5


@dataclass(frozen=True)
class PixelGrid:
    """A north-up raster grid in a metric CRS: where a tile's pixels lie.

    Attributes:
        crs: the grid's CRS as an authority string, e.g. ``"EPSG:32737"`` (a UTM zone).
        transform: the affine transform from pixel (col, row) to ``crs`` coordinates.
        width: number of columns.
        height: number of rows.
    """

    crs: str
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Return ``(left, bottom, right, top)`` in the grid's CRS."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    @property
    def pixel_size(self) -> float:
        """Return the pixel size in CRS units (metres)."""
        return float(self.transform.a)


@dataclass(frozen=True)
class GridSpec:
    """How the earth is cut into tiles.

    Attributes:
        level: S2 level of the tile cores. Level 14 cells are 0.3-0.6 km across (about 1,100
            pixels at 50 cm), big enough that the margin costs little.
        margin_m: how far beyond its core a tile is read, in metres. Buildings whose centroid lies
            in the core but which reach further than this are cut.
        pixel_size_m: the ground sampling distance of the model's input.
    """

    level: int = 14
    margin_m: float = 32.0
    pixel_size_m: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 24:
            raise ValueError(f"tile level must be between 1 and 24, got {self.level}")
        if self.margin_m < 0 or self.pixel_size_m <= 0:
            raise ValueError("margin_m must be >= 0 and pixel_size_m > 0")


@dataclass(frozen=True)
class Tile:
    """One tile: the S2 cell it owns (its core) and the pixel grid it is read on.

    Attributes:
        id: the core's S2 token, a stable string such as ``"39e9a5c"``.
        spec: the grid spec the tile belongs to.
    """

    id: str
    spec: GridSpec = field(default_factory=GridSpec)

    @cached_property
    def core(self) -> shapely.Polygon | shapely.MultiPolygon:
        """The area this tile owns, in lon/lat."""
        return cells.cell_polygon(self.id)

    @cached_property
    def crs(self) -> str:
        """The tile's local metric CRS: the UTM zone (or UPS cap) of its centre."""
        center = s2.S2CellId.FromToken(self.id).ToLatLng()
        return utm_crs(center.lng().degrees(), center.lat().degrees())

    @cached_property
    def _outline_local(self) -> tuple[np.ndarray, np.ndarray]:
        """The core's outline (16 points an edge, so its curvature counts) in ``crs``."""
        to_local = Transformer.from_crs("EPSG:4326", self.crs, always_xy=True)
        outline = shapely.get_coordinates(cells.cell_polygon(self.id, points_per_edge=16))
        x, y = to_local.transform(outline[:, 0], outline[:, 1])
        return np.asarray(x), np.asarray(y)

    @cached_property
    def grid(self) -> PixelGrid:
        """The tile's pixel grid: its core's bounds in ``crs`` plus the margin, pixel-snapped."""
        x, y = self._outline_local
        size, margin = self.spec.pixel_size_m, self.spec.margin_m
        left = math.floor((np.min(x) - margin) / size) * size
        bottom = math.floor((np.min(y) - margin) / size) * size
        right = math.ceil((np.max(x) + margin) / size) * size
        top = math.ceil((np.max(y) + margin) / size) * size
        width, height = round((right - left) / size), round((top - bottom) / size)
        return PixelGrid(self.crs, Affine(size, 0.0, left, 0.0, -size, top), width, height)

    @cached_property
    def core_window(self) -> tuple[float, float, float, float]:
        """``(row_min, row_max, col_min, col_max)``: the core's bounding box in grid pixels.

        A point outside it is not owned; :meth:`owns` decides the points inside it.
        """
        cols, rows = ~self.grid.transform @ self._outline_local
        return float(rows.min()), float(rows.max()), float(cols.min()), float(cols.max())

    def owns(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Return, for each point, whether it lies in this tile's core (exact, via S2 ids)."""
        own_id = s2.S2CellId.FromToken(self.id).id()
        return cells.cell_ids(lon, lat, self.spec.level) == np.uint64(own_id)


def utm_crs(lon: float, lat: float) -> str:
    """Return the metric CRS for a point: its UTM zone, or UPS beyond 84°N / 80°S.

    The standard 6° zones are used everywhere (the Norway and Svalbard exceptions are not), so a
    tile's CRS depends only on its centre's longitude and hemisphere.
    """
    if lat > 84.0:
        return "EPSG:32661"
    if lat < -80.0:
        return "EPSG:32761"
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def tile_from_id(tile_id: str, spec: GridSpec | None = None) -> Tile:
    """Return the tile with this id, checking that the id is a cell at the spec's level."""
    spec = spec or GridSpec()
    level = cells.token_level(tile_id)
    if level != spec.level:
        raise ValueError(
            f"tile {tile_id!r} is an S2 level-{level} cell; this grid uses level {spec.level}"
        )
    return Tile(tile_id, spec)


def tile_for_point(lon: float, lat: float, spec: GridSpec | None = None) -> Tile:
    """Return the tile that owns a point."""
    spec = spec or GridSpec()
    return Tile(cells.cell_token(lon, lat, spec.level), spec)


def cover(geometry: shapely.Geometry, spec: GridSpec | None = None) -> Iterator[Tile]:
    """Yield exactly the tiles whose core touches ``geometry``, in S2 (Hilbert) order.

    It streams: the S2 hierarchy is walked depth first, so a continent never becomes a list. A
    region of many parts (over :data:`_BATCH_PARTS`, e.g. 100,000 building-sized squares) is
    walked batch by batch instead, and its tiles (a few per part at most) are listed and sorted.

    Args:
        geometry: a (multi)polygon in lon/lat within ±180, e.g. ``Region.geometry``.
        spec: the grid spec; defaults to ``GridSpec()``.
    """
    spec = spec or GridSpec()
    batches = _s2_batches(geometry)
    if len(batches) == 1:
        for cell_id in _walk(batches[0], spec.level):
            yield Tile(cell_id.ToToken(), spec)
        return
    for cell_id in sorted(_batched_ids(batches, spec.level)):
        yield Tile(s2.S2CellId(cell_id).ToToken(), spec)


def count_tiles(geometry: shapely.Geometry, spec: GridSpec | None = None) -> int:
    """Return how many tiles ``cover`` would yield, without enumerating the interior ones."""
    spec = spec or GridSpec()
    batches = _s2_batches(geometry)
    if len(batches) == 1:
        return sum(_walk(batches[0], spec.level, count_only=True))
    return len(_batched_ids(batches, spec.level))


def _s2_batches(geometry: shapely.Geometry) -> list[s2.S2Polygon]:
    """One S2Polygon, or one per batch of nearby parts for a region of very many parts.

    S2Polygon.InitNested works out which loop lies in which, a cost that grows with the square
    of the loops; batches of parts in Hilbert order keep each small and compact.
    """
    parts = shapely.get_parts(geometry)
    if len(parts) <= _BATCH_PARTS:
        return [_to_s2(geometry)]
    centres = shapely.get_coordinates(shapely.point_on_surface(parts))
    order = np.argsort(cells.cell_ids(centres[:, 0], centres[:, 1]), kind="stable")
    return [
        _to_s2(shapely.MultiPolygon(list(parts[order[i : i + _BATCH_PARTS]])))
        for i in range(0, len(parts), _BATCH_PARTS)
    ]


def _batched_ids(batches: list[s2.S2Polygon], level: int) -> set[int]:
    return {cell_id.id() for polygon in batches for cell_id in _walk(polygon, level)}


def _walk(polygon: s2.S2Polygon, level: int, count_only: bool = False) -> Iterator:
    stack = [s2.S2CellId.FromFacePosLevel(face, 0, 0) for face in reversed(range(6))]
    while stack:
        cell_id = stack.pop()
        cell = s2.S2Cell(cell_id)
        if not polygon.MayIntersect(cell):
            continue
        if cell_id.level() == level:
            yield 1 if count_only else cell_id
        elif polygon.Contains(cell):
            if count_only:
                yield 4 ** (level - cell_id.level())
                continue
            child, end = cell_id.child_begin(level), cell_id.child_end(level)
            while child != end:
                yield child
                child = child.next()
        else:
            stack.extend(cell_id.child(k) for k in (3, 2, 1, 0))


def _to_s2(geometry: shapely.Geometry) -> s2.S2Polygon:
    """Convert a lon/lat (multi)polygon into one S2Polygon (exteriors and holes as nested loops).

    S2 edges are geodesics and an S2 loop is read as the smaller of the two areas it bounds, so
    a polygon wider than :data:`_MAX_BAND_DEG` of longitude (up to the whole world, or a polar
    cap) is cut into bands of at most that width, each well under a hemisphere, whose
    S2Polygons are united; edges are densified so that they follow their parallels.
    """
    parts = shapely.get_parts(geometry)
    if len(parts) == 0 or not all(isinstance(p, shapely.Polygon) for p in parts):
        raise ValueError("cover() needs a Polygon or MultiPolygon in lon/lat")
    west, _, east, _ = shapely.total_bounds(parts)
    if east - west <= _MAX_BAND_DEG:
        return _s2_polygon(geometry)
    result = s2.S2Polygon()
    edges = np.linspace(west, east, math.ceil((east - west) / _MAX_BAND_DEG) + 1)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = shapely.intersection(geometry, shapely.box(lo, -90.0, hi, 90.0))
        pieces = [p for p in shapely.get_parts(band) if isinstance(p, shapely.Polygon) and p.area]
        if pieces:
            united = s2.S2Polygon()
            united.InitToUnion(result, _s2_polygon(shapely.MultiPolygon(pieces)))
            result = united
    return result


def _s2_polygon(geometry: shapely.Geometry) -> s2.S2Polygon:
    geometry = shapely.orient_polygons(shapely.segmentize(geometry, _DENSIFY_DEG))
    loops = []
    for polygon in shapely.get_parts(geometry):
        for ring in [polygon.exterior, *polygon.interiors]:
            coords = np.asarray(ring.coords)[:-1]
            # A pole written as several positions (lat 90 at many longitudes) is one point.
            at_pole = np.abs(coords[:, 1]) == 90.0
            coords[at_pole, 0] = 0.0
            keep = np.any(coords != np.roll(coords, 1, axis=0), axis=1)
            points = [s2.S2LatLng.FromDegrees(y, x).ToPoint() for x, y in coords[keep].tolist()]
            loop = s2.S2Loop(points)
            loop.Normalize()  # every loop as the smaller side; InitNested works out the holes
            loops.append(loop)
    result = s2.S2Polygon()
    result.InitNested(loops)
    return result


def chunk_level(tile_level: int) -> int:
    """Return the S2 level of the chunks tiles are enumerated in (at least 1)."""
    return max(1, tile_level - CHUNK_LEVELS)


def tile_chunks(geometry: shapely.Geometry, tile_level: int) -> Iterator[str]:
    """Yield the tokens of the coarse S2 cells (chunks) that touch ``geometry``.

    Each chunk holds up to ``4 ** CHUNK_LEVELS`` tiles; workers expand chunks in parallel, so a
    continent's tiles are never listed in one place.

    Args:
        geometry: the region in lon/lat.
        tile_level: the S2 level of the tiles.
    """
    for chunk in cover(geometry, GridSpec(level=chunk_level(tile_level))):
        yield chunk.id


def tiles_in_chunk(geometry: shapely.Geometry, chunk: str, spec: GridSpec) -> Iterator[str]:
    """Yield the ids of the tiles of one chunk whose core touches ``geometry``.

    The region is clipped to the chunk's outline grown by a tenth of its size (so that the outline's
    polyline approximation of geodesic edges can lose nothing), covered at the tile level, and the
    tiles that are not descendants of the chunk are dropped. Over all chunks this yields
    ``cover(geometry, spec)``, each tile once, except tiles that touch the region only along a
    line at the antimeridian (no area of the region lies in their cores, so they own nothing).

    Args:
        geometry: the region in lon/lat.
        chunk: a token from :func:`tile_chunks`.
        spec: the tiling grid.
    """
    outline = cells.cell_polygon(chunk, points_per_edge=32)
    minx, miny, maxx, maxy = outline.bounds
    grown = shapely.buffer(outline, 0.1 * max(maxx - minx, maxy - miny), join_style="mitre")
    grown = shapely.intersection(grown, shapely.box(-180.0, -90.0, 180.0, 90.0))
    part = shapely.intersection(geometry, grown)
    polygons = [p for p in shapely.get_parts(part) if isinstance(p, shapely.Polygon) and p.area > 0]
    if not polygons:
        return
    piece = polygons[0] if len(polygons) == 1 else shapely.MultiPolygon(polygons)
    parent = cells.parse_token(chunk)
    for tile in cover(piece, spec):
        if parent.contains(cells.parse_token(tile.id)):
            yield tile.id
