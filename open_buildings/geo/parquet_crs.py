"""The CRS written into every GeoParquet file: one fixed PROJJSON, whatever the process did.

geopandas writes ``frame.crs.to_json_dict()``, which depends on how that CRS object was made
(from the string "EPSG:4326", or from a WKT that GDAL wrote: ``datum`` instead of
``datum_ensemble``) and on the EPSG database of the installed PROJ (its list of WGS 84
realizations grows). A resumed run must write the same bytes as an uninterrupted one, so the
CRS geopandas wrote is replaced by this constant: EPSG:4326 as pyproj 3.7.2 / PROJ 9.5.1 wrote
it (with the ensemble members' ids removed, as geopandas does).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

__all__ = ["WGS84_PROJJSON", "with_fixed_crs"]

WGS84_PROJJSON: dict[str, Any] = {
    "$schema": "https://proj.org/schemas/v0.7/projjson.schema.json",
    "type": "GeographicCRS",
    "name": "WGS 84",
    "datum_ensemble": {
        "name": "World Geodetic System 1984 ensemble",
        "members": [
            {"name": "World Geodetic System 1984 (Transit)"},
            {"name": "World Geodetic System 1984 (G730)"},
            {"name": "World Geodetic System 1984 (G873)"},
            {"name": "World Geodetic System 1984 (G1150)"},
            {"name": "World Geodetic System 1984 (G1674)"},
            {"name": "World Geodetic System 1984 (G1762)"},
            {"name": "World Geodetic System 1984 (G2139)"},
            {"name": "World Geodetic System 1984 (G2296)"},
        ],
        "ellipsoid": {
            "name": "WGS 84",
            "semi_major_axis": 6378137,
            "inverse_flattening": 298.257223563,
        },
        "accuracy": "2.0",
        "id": {"authority": "EPSG", "code": 6326},
    },
    "coordinate_system": {
        "subtype": "ellipsoidal",
        "axis": [
            {
                "name": "Geodetic latitude",
                "abbreviation": "Lat",
                "direction": "north",
                "unit": "degree",
            },
            {
                "name": "Geodetic longitude",
                "abbreviation": "Lon",
                "direction": "east",
                "unit": "degree",
            },
        ],
    },
    "scope": "Horizontal component of 3D system.",
    "area": "World.",
    "bbox": {
        "south_latitude": -90,
        "west_longitude": -180,
        "north_latitude": 90,
        "east_longitude": 180,
    },
    "id": {"authority": "EPSG", "code": 4326},
}


def with_fixed_crs(table: pa.Table) -> pa.Table:
    """Return ``table`` with its GeoParquet CRS set to :data:`WGS84_PROJJSON` wherever it is kept.

    geopandas records the CRS twice: in the ``geo`` schema metadata, and in each geometry
    field's GeoArrow extension metadata (``ARROW:extension:metadata``). Both are replaced.

    Args:
        table: a table as geopandas writes it (with ``geo`` schema metadata), in EPSG:4326.

    Returns:
        The same columns and data, with only that metadata changed.
    """
    metadata = dict(table.schema.metadata or {})
    geo = json.loads(metadata[b"geo"])
    for column in geo["columns"].values():
        column["crs"] = WGS84_PROJJSON
    metadata[b"geo"] = json.dumps(geo).encode("utf-8")
    fields = []
    for field in table.schema:
        extra = dict(field.metadata or {})
        if field.name in geo["columns"] and b"ARROW:extension:metadata" in extra:
            extension = json.loads(extra[b"ARROW:extension:metadata"] or b"{}")
            extension["crs"] = WGS84_PROJJSON
            extra[b"ARROW:extension:metadata"] = json.dumps(extension).encode("utf-8")
            field = field.with_metadata(extra)
        fields.append(field)
    return table.cast(pa.schema(fields, metadata=metadata))
