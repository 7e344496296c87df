"""Imagery for the large-region benchmarks: the real Nairobi sample, mirrored across many km².

The embedded sample covers about 0.1 km², so a 16 km² region over it would be mostly tiles
without imagery, which the pipeline skips after the read: neither its memory nor its throughput
would show dense inference. :func:`mirrored_imagery` writes a tiled, JPEG-compressed GeoTIFF
(EPSG:3857, like the sample) that repeats the sample's pixels, mirrored at every edge so there
are no seams, over a square of any size; every tile of a region inside it is full of real
buildings and the model and post-processing do their full work.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "geo" / "sample"
#: Web-Mercator metres per ground metre at the sample's latitude is 1 / cos(lat) ~ 1.0003.
_BLOCK = 512


def sample_center() -> tuple[float, float]:
    """Return the (lon, lat) centre of the sample region."""
    data = json.loads((SAMPLE / "region.geojson").read_text())
    ring = data["features"][0]["geometry"]["coordinates"][0][:-1]
    return float(np.mean([p[0] for p in ring])), float(np.mean([p[1] for p in ring]))


def square_region(center_lon: float, center_lat: float, km2: float, path: Path) -> Path:
    """Write a square region of ``km2`` around a point as GeoJSON; return its path."""
    half_km = math.sqrt(km2) / 2
    dlat = half_km / 110.574
    dlon = half_km / (111.320 * math.cos(math.radians(center_lat)))
    w, e = center_lon - dlon, center_lon + dlon
    s, n = center_lat - dlat, center_lat + dlat
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    return path


def _source_block(pixel_m: float) -> np.ndarray:
    """The sample's block ``a`` resampled to ``pixel_m`` and mirrored into a seamless 2x2 block."""
    with rasterio.open(SAMPLE / "nairobi_a.tif") as ds:
        scale = ds.res[0] / pixel_m
        size = (round(ds.height * scale), round(ds.width * scale))
        pixels = ds.read(out_shape=(3, *size), resampling=Resampling.average)
    top = np.concatenate([pixels, pixels[:, :, ::-1]], axis=2)
    return np.concatenate([top, top[:, ::-1, :]], axis=1)


def mirrored_imagery(path: Path, side_km: float, pixel_m: float = 0.5) -> Path:
    """Write a GeoTIFF of the mirrored sample covering a square of ``side_km`` around the sample.

    Args:
        path: the ``.tif`` to write.
        side_km: the side of the square, in ground kilometres.
        pixel_m: the ground pixel size (the sample is 0.3 m; production imagery is about 0.5 m).

    Returns:
        The path.
    """
    lon, lat = sample_center()
    stretch = 1 / math.cos(math.radians(lat))  # Web-Mercator metres per ground metre
    res = pixel_m * stretch
    side = math.ceil(side_km * 1000 / pixel_m / _BLOCK) * _BLOCK
    half = 20037508.342789244
    cx = lon / 180.0 * half
    cy = math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) / math.pi * half
    transform = from_origin(cx - side / 2 * res, cy + side / 2 * res, res, res)
    block = _source_block(pixel_m)
    bh, bw = block.shape[1:]
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:3857",
        "transform": transform,
        "tiled": True,
        "blockxsize": _BLOCK,
        "blockysize": _BLOCK,
        "compress": "jpeg",
        "photometric": "ycbcr",
        "jpeg_quality": 90,
    }
    cols = np.arange(side) % bw
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, side, _BLOCK):
            rows = np.arange(row0, row0 + _BLOCK) % bh
            strip = block[:, rows][:, :, cols]
            dst.write(strip, window=Window(0, row0, side, _BLOCK))
    return path
