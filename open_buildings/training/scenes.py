"""Training scenes: imagery and rasterized label instances on the pipeline's own 50 cm tile grid.

A scene is one grid tile (an S2 cell with its margin, read exactly as ``ob-infer`` reads it) that
has imagery. Labels are rasterized to instance ids on the same grid. Pixels outside the tile's
core get zero loss weight, so neighbouring tiles never train on the same labelled pixels, and a
split by whole tiles cannot leak a building from one side to the other.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio.features
import shapely

from open_buildings.errors import ConfigError
from open_buildings.geo import grid as geogrid
from open_buildings.geo import imagery
from open_buildings.geo.grid import GridSpec, PixelGrid


@dataclass
class Scene:
    """One tile of imagery, with its labels when it has them.

    Attributes:
        area: name of the area the scene comes from (e.g. ``"banepa"``).
        tile_id: the grid tile's S2 token.
        grid: the tile's pixel grid.
        rgb: uint8 ``(3, H, W)``.
        valid: bool ``(H, W)``, where there is imagery.
        core: bool ``(H, W)``, the pixels this tile owns.
        instances: int32 ``(H, W)`` building ids (0 = background), or None if unlabelled.
    """

    area: str
    tile_id: str
    grid: PixelGrid
    rgb: np.ndarray
    valid: np.ndarray
    core: np.ndarray
    instances: np.ndarray | None


def read_labels(path: str | os.PathLike[str]) -> gpd.GeoDataFrame:
    """Read building polygons as users have them (OSM exports, hand-drawn; GeoJSON, GeoPackage,
    shapefile, GeoParquet; any CRS) as a GeoDataFrame in EPSG:4326.

    Raises:
        ConfigError: the file is missing or unreadable, holds no polygons, or its CRS is missing
            (outside GeoJSON and GeoParquet, whose CRS is WGS 84 when absent) or wrong for its
            coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"label file {path} does not exist; check the path")
    try:
        frame = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, ValueError) as exc:
        raise ConfigError(
            f"label file {path} cannot be read as vector data ({exc}); export the buildings as "
            "GeoJSON or GeoPackage"
        ) from exc
    frame = frame[frame.geometry.notna() & frame.geom_type.isin(["Polygon", "MultiPolygon"])]
    if frame.empty:
        raise ConfigError(f"label file {path} holds no building polygons")
    if frame.crs is None:
        if path.suffix.lower() not in (".geojson", ".json", ".parquet"):  # WGS 84 by spec
            raise ConfigError(
                f"label file {path} has no CRS; save it with one (e.g. a .prj beside a "
                "shapefile) or as GeoJSON in longitude/latitude"
            )
        frame = frame.set_crs("EPSG:4326")
    frame = frame.to_crs("EPSG:4326")
    west, south, east, north = frame.total_bounds
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
        raise ConfigError(
            f"label file {path}: coordinates ({west:.0f}, {south:.0f}, {east:.0f}, {north:.0f}) "
            f"are not longitudes and latitudes under its CRS; the file's CRS is wrong or "
            "missing: re-export it with its real CRS"
        )
    return frame[["geometry"]].reset_index(drop=True)


def load_scenes(
    name: str,
    source: imagery.ImagerySource,
    labels: gpd.GeoDataFrame | None,
    spec: GridSpec,
    *,
    min_valid_px: int = 1,
    only: Collection[str] | None = None,
    held_out: Collection[str] = (),
) -> list[Scene]:
    """Read every grid tile that the source covers into a scene.

    Args:
        name: the area's name, carried into each scene.
        source: where the pixels come from.
        labels: building polygons in EPSG:4326, or None for unlabelled imagery.
        spec: the tile grid (the same one inference uses).
        min_valid_px: skip tiles with fewer pixels of imagery than this (e.g. one chip's worth).
        only: read only these tiles (a validation block).
        held_out: tiles never to train on: they are skipped, and their cores are blanked (no
            imagery) in the margins of neighbouring scenes, so not even their pixels are seen.
    """
    scenes = []
    for tile in area_tiles(source, spec, only=only, held_out=held_out):
        scene = read_scene(name, source, labels, tile, min_valid_px=min_valid_px, held=held_out)
        if scene is not None:
            scenes.append(scene)
    return scenes


def area_tiles(
    source: imagery.ImagerySource,
    spec: GridSpec,
    *,
    only: Collection[str] | None = None,
    held_out: Collection[str] = (),
) -> list[geogrid.Tile]:
    """The grid tiles whose cores touch the source's bounds, less ``held_out``, within ``only``."""
    west, south, east, north = source.bounds_lonlat()
    return [
        tile
        for tile in geogrid.cover(shapely.box(west, south, east, north), spec)
        if (only is None or tile.id in only) and tile.id not in held_out
    ]


def read_scene(
    name: str,
    source: imagery.ImagerySource,
    labels: gpd.GeoDataFrame | None,
    tile: geogrid.Tile,
    *,
    min_valid_px: int = 1,
    held: Collection[str] = (),
) -> Scene | None:
    """Read one grid tile into a scene, or None when it has under ``min_valid_px`` of imagery.

    ``held`` tiles (validation) are blanked (no imagery) where they reach into this tile's
    margin, so not even their pixels are trained on.
    """
    image = source.read(tile.grid)
    if image.valid.sum() < min_valid_px:
        return None
    g = tile.grid
    core_local = gpd.GeoSeries([tile.core], crs="EPSG:4326").to_crs(g.crs).iloc[0]
    core = burn_shapes([core_local], g)
    rgb, valid = image.rgb, image.valid
    reach = tile.core.buffer(0.001)  # about 100 m: more than any margin
    cores = [geogrid.tile_from_id(t, tile.spec).core for t in held]
    near = [c for c in cores if shapely.intersects(c, reach)]
    if near:
        blank = burn_shapes(gpd.GeoSeries(near, crs="EPSG:4326").to_crs(g.crs).values, g)
        rgb, valid = np.where(blank, 0, rgb).astype(rgb.dtype), valid & ~blank
        if valid.sum() < min_valid_px:
            return None
    instances = None if labels is None else rasterize_instances(labels, g)
    return Scene(name, tile.id, g, rgb, valid, core, instances)


def burn_shapes(shapes, grid: PixelGrid) -> np.ndarray:
    """A bool mask of the grid's pixels that the shapes (in the grid's CRS) cover."""
    return rasterio.features.rasterize(
        [(s, 1) for s in shapes],
        out_shape=(grid.height, grid.width),
        transform=grid.transform,
        dtype="uint8",
    ).astype(bool)


def rasterize_instances(labels: gpd.GeoDataFrame, grid: PixelGrid) -> np.ndarray:
    """Burn label polygons into an int32 instance-id raster (ids 1..N in label order)."""
    shape = (grid.height, grid.width)
    local = labels.to_crs(grid.crs).geometry.values
    west, south, east, north = grid.bounds
    keep = np.flatnonzero(shapely.intersects(local, shapely.box(west, south, east, north)))
    if keep.size == 0:
        return np.zeros(shape, dtype=np.int32)
    return rasterio.features.rasterize(
        zip(local[keep], (keep + 1).tolist()),
        out_shape=shape,
        transform=grid.transform,
        dtype="int32",
    )
