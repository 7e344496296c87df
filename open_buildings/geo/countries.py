"""Countries by name or ISO code, from the shipped Natural Earth outlines (``geo/countries/``)."""

from __future__ import annotations

import difflib
import functools
import json

import geopandas as gpd
import shapely

from open_buildings.errors import RegionError
from open_buildings.geo.regions import Region, parse_region
from open_buildings.resources import resource


@functools.lru_cache(maxsize=1)
def countries() -> gpd.GeoDataFrame:
    """The shipped outlines: ``name``, ``name_long``, ``iso_a3``, ``iso_a2``, ``continent``."""
    return gpd.read_parquet(str(resource("geo", "countries", "countries.parquet")))


def find_country(query: str) -> gpd.GeoSeries:
    """The row of a country given by ISO 3166 alpha-3 or alpha-2 code or English name.

    Args:
        query: e.g. ``"KEN"``, ``"ke"``, ``"Kenya"`` or ``"Republic of Kenya"`` (case ignored).

    Raises:
        RegionError: nothing matches (the message suggests the nearest names).
    """
    table = countries()
    text = query.strip().casefold()
    for column in ("iso_a3", "iso_a2", "name", "name_long"):
        hits = table[table[column].fillna("").str.casefold() == text]
        if len(hits):
            return hits.iloc[0]
    names = table["name"].tolist()
    close = difflib.get_close_matches(query.strip().title(), names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise RegionError(
        f"no country {query!r} in the shipped Natural Earth outlines{hint} Give an ISO code "
        "(KEN, KE) or the English name, as `ob-download --list-countries` prints them"
    )


def country_region(query: str) -> Region:
    """The region of a country (Natural Earth 1:10m, simplified; see ``geo/countries/README``).

    Args:
        query: as for :func:`find_country`.

    Returns:
        The region, named ``country <ISO3> (<name>)``; no area cap applies.
    """
    row = find_country(query)
    geometry = json.loads(shapely.to_geojson(row.geometry))
    source = f"country {row['iso_a3']} ({row['name']})"
    return parse_region(geometry, source=source, max_area_km2=float("inf"))


def country_table() -> list[tuple[str, str, str]]:
    """``(iso_a3, iso_a2, name)`` of every shipped country, by ISO code."""
    table = countries()
    return list(zip(table["iso_a3"], table["iso_a2"].fillna("-"), table["name"], strict=True))
