"""Build the embedded sample imagery from the Nairobi OpenAerialMap XYZ tiles.

Run from the repository root with the shared data checked out next to it:
    python geo/sample/build_sample.py ../shared/data/xyz_tiles/nairobi_ke

It mosaics each block of zoom-19 tiles into one Cloud-Optimized GeoTIFF in EPSG:3857 (the tiles'
own CRS, so no pixel is resampled), writes a STAC ItemCollection over them, and a region GeoJSON.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_bounds

HERE = Path(__file__).parent
HALF = 20037508.342789244  # half the Web-Mercator world width, metres
BLOCKS = {  # name: (x range, y range) of z19 tiles
    "nairobi_a": (range(315892, 315896), range(264044, 264048)),
    "nairobi_b": (range(315878, 315882), range(264050, 264052)),
}


def tile_bounds(x: int, y: int, z: int) -> tuple[float, float, float, float]:
    """Return the EPSG:3857 bounds (left, bottom, right, top) of slippy tile x, y, z."""
    size = 2 * HALF / 2**z
    return (-HALF + x * size, HALF - (y + 1) * size, -HALF + (x + 1) * size, HALF - y * size)


def to_lonlat(mx: float, my: float) -> tuple[float, float]:
    """Web-Mercator metres to lon/lat degrees."""
    lon = mx / HALF * 180.0
    lat = math.degrees(2 * math.atan(math.exp(my / HALF * math.pi)) - math.pi / 2)
    return lon, lat


def build(src: Path) -> None:
    """Write the COGs, the STAC ItemCollection and the region into this folder."""
    features = []
    for name, (xs, ys) in BLOCKS.items():
        rows = []
        for y in ys:
            row = []
            for x in xs:
                with rasterio.open(src / f"OAM-{x}-{y}-19.png") as tile:
                    row.append(tile.read([1, 2, 3]))
            rows.append(np.concatenate(row, axis=2))
        mosaic = np.concatenate(rows, axis=1)
        left, _, _, top = tile_bounds(xs[0], ys[0], 19)
        _, bottom, right, _ = tile_bounds(xs[-1], ys[-1], 19)
        transform = from_bounds(left, bottom, right, top, mosaic.shape[2], mosaic.shape[1])
        path = HERE / f"{name}.tif"
        with rasterio.open(
            path,
            "w",
            driver="COG",
            width=mosaic.shape[2],
            height=mosaic.shape[1],
            count=3,
            dtype="uint8",
            crs="EPSG:3857",
            transform=transform,
            compress="JPEG",
            quality=90,
            photometric="YCBCR",
            blocksize=256,
            overview_resampling="average",
        ) as dst:
            dst.write(mosaic)
        (w, s), (e, n) = to_lonlat(left, bottom), to_lonlat(right, top)
        features.append(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "id": name,
                "bbox": [w, s, e, n],
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
                },
                "properties": {
                    "datetime": None,
                    "start_datetime": "2019-01-01T00:00:00Z",
                    "end_datetime": "2019-12-31T23:59:59Z",
                    "gsd": 0.3,
                    "license": "CC-BY-4.0",
                    "providers": [{"name": "OpenAerialMap", "roles": ["producer"]}],
                },
                "links": [],
                "assets": {
                    "visual": {
                        "href": f"./{name}.tif",
                        "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                        "roles": ["data", "visual"],
                    }
                },
            }
        )
    (HERE / "items.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": features}, indent=1)
    )
    w, s, e, n = features[0]["bbox"]
    inset = 0.0002  # keep the region inside the imagery of block a
    ring = [
        [w + inset, s + inset],
        [e - inset, s + inset],
        [e - inset, n - inset],
        [w + inset, n - inset],
        [w + inset, s + inset],
    ]
    region = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"name": "Nairobi sample"},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        ],
    }
    (HERE / "region.geojson").write_text(json.dumps(region, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    src_dir = Path(sys.argv[1])
    if not re.search(r"nairobi", str(src_dir)):
        print("warning: expected the nairobi_ke tile folder", file=sys.stderr)
    build(src_dir)
