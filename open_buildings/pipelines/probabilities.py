"""Per-tile probability rasters: what ``ob-infer --write-probabilities`` writes, ``ob-train`` reads.

Each tile's model output becomes one Cloud-Optimized GeoTIFF, ``<output>/probabilities/<tile>.tif``,
on the tile's own 50 cm grid (its UTM CRS, margin included): one uint8 band per output channel
(``building``, ``interior``), the probability times 250, 255 where there is no imagery (nodata).
GDAL's scale tag (1/250) lets any GIS read the values as probabilities. Self-training reads them
as a teacher's soft targets: a tile read on the same grid gets the same pixels.
"""

from __future__ import annotations

import os

import numpy as np
import rasterio
from rasterio.io import MemoryFile
from scipy.special import expit

from open_buildings.errors import ConfigError
from open_buildings.geo.grid import PixelGrid
from open_buildings.pipelines.sinks import put
from open_buildings.remote import is_remote, local_copy

FOLDER = "probabilities"
SCALE = 250
NODATA = 255


def probability_path(output: str, tile_id: str, folder: str = FOLDER) -> str:
    """Return where the tile's probability raster goes under an ``ob-infer`` output folder."""
    return f"{str(output).rstrip('/')}/{folder}/{tile_id}.tif"


def write_probabilities(
    logits: np.ndarray,
    valid: np.ndarray,
    grid: PixelGrid,
    output: str,
    tile_id: str,
    channels: tuple[str, ...] = ("building", "interior"),
    folder: str = FOLDER,
) -> str:
    """Write one tile's probabilities as a COG; the file appears whole (``sinks.put``).

    Args:
        logits: float ``(C, H, W)`` on ``grid``.
        valid: bool ``(H, W)``, where there is imagery (``(C, H, W)``: per band).
        grid: the tile's pixel grid.
        output: the run's output folder (local, or a URL Beam's FileSystems write).
        tile_id: the tile's S2 token.
        channels: the band descriptions.
        folder: the subfolder of ``output`` (``ob-change`` writes other rasters this way).

    Returns:
        The path written.
    """
    data = np.rint(expit(np.asarray(logits, dtype=np.float32)) * SCALE).astype(np.uint8)
    if valid.ndim == 2:
        valid = np.broadcast_to(valid, data.shape)
    data[~valid] = NODATA
    profile = {
        "driver": "COG",
        "width": grid.width,
        "height": grid.height,
        "count": data.shape[0],
        "dtype": "uint8",
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": NODATA,
        "compress": "deflate",
    }
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(data)
            dst.descriptions = channels[: data.shape[0]]
            dst.scales = [1.0 / SCALE] * data.shape[0]
        blob = memory.read()
    return put(probability_path(output, tile_id, folder), lambda handle: handle.write(blob))


def read_probabilities(path: str, grid: PixelGrid) -> tuple[np.ndarray, np.ndarray]:
    """Read a tile's probabilities, which must be on ``grid``.

    Returns:
        float32 ``(C, H, W)`` probabilities (0 where there was no imagery) and the bool
        ``(H, W)`` mask of pixels that have them.

    Raises:
        ConfigError: the file is missing, or was written on another grid.
    """
    local = local_copy(path) if is_remote(path) else path
    if not os.path.exists(local):
        raise ConfigError(
            f"no teacher probabilities at {path}; run ob-infer --write-probabilities over this "
            "imagery with the teacher model, and point 'probabilities' at its --out folder"
        )
    with rasterio.open(local) as src:
        same = (
            src.crs == grid.crs
            and (src.width, src.height) == (grid.width, grid.height)
            and src.transform.almost_equals(grid.transform)
        )
        if not same:
            raise ConfigError(
                f"{path} is on another grid ({src.crs}, {src.width}x{src.height}) than the tile "
                f"({grid.crs}, {grid.width}x{grid.height}); write it with the same tile level "
                "and margin as the training config"
            )
        data = src.read()
    has = (data != NODATA).all(axis=0)
    probs = np.where(has, data.astype(np.float32) / SCALE, 0.0).astype(np.float32)
    return probs, has
