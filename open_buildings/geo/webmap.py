"""One self-contained HTML map of footprints: Leaflet (shipped, inlined), no network needed.

The footprints are drawn coloured by confidence over the imagery (read through the project's
imagery sources onto a Web Mercator grid, downsampled to at most ``OVERLAY_MAX_PX`` a side and
inlined as a PNG), with a legend, the region's outline, and a popup of each building's attributes.
Past ``max_features`` buildings a page of polygons gets slow and large (about 300 bytes each), so
the map then shows how many buildings fall in each square of a grid instead, and says so.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
from affine import Affine
from pyproj import Transformer

from open_buildings.geo.grid import PixelGrid
from open_buildings.resources import resource

#: Above this many buildings the map aggregates them into grid squares.
MAX_FEATURES = 50_000
#: The imagery overlay's longest side, in pixels.
OVERLAY_MAX_PX = 2048
#: At most this many squares when aggregating (and a tenth of ``max_features``).
MAX_SQUARES = 4_000
#: Viridis at five stops (matplotlib's), low confidence to high.
RAMP = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
POPUP_COLUMNS = ("confidence", "area_in_meters", "full_plus_code", "latitude", "longitude")
_MERCATOR = "EPSG:3857"


@dataclass(frozen=True)
class Overlay:
    """An image drawn under the footprints.

    Attributes:
        png: the PNG bytes (RGBA; no-data pixels are transparent).
        bounds: ``(west, south, east, north)`` in degrees.
    """

    png: bytes
    bounds: tuple[float, float, float, float]


def imagery_overlay(
    source: Any, bounds: tuple[float, float, float, float], max_px: int = OVERLAY_MAX_PX
) -> Overlay | None:
    """Read ``source`` over ``bounds`` onto a Web Mercator grid of at most ``max_px`` a side.

    Args:
        source: an imagery source (``geo.imagery.open_imagery``).
        bounds: ``(west, south, east, north)`` in degrees.
        max_px: the longest side in pixels.

    Returns:
        The overlay, or None when the imagery has no pixel there.
    """
    from PIL import Image

    to_merc = Transformer.from_crs("EPSG:4326", _MERCATOR, always_xy=True)
    west, south, east, north = bounds
    left, bottom = to_merc.transform(west, south)
    right, top = to_merc.transform(east, north)
    # Web Mercator metres are 1/cos(lat) ground metres: 0.5 m imagery is ~0.5/cos(lat) here.
    native = 0.5 / math.cos(math.radians((south + north) / 2))
    size = max((right - left) / max_px, (top - bottom) / max_px, native)
    width = max(1, math.ceil((right - left) / size))
    height = max(1, math.ceil((top - bottom) / size))
    grid = PixelGrid(_MERCATOR, Affine(size, 0, left, 0, -size, top), width, height)
    image = source.read(grid)
    if not image.valid.any():
        return None
    rgba = np.concatenate([image.rgb, (image.valid * 255).astype(np.uint8)[None]])
    buffer = io.BytesIO()
    Image.fromarray(np.moveaxis(rgba, 0, -1), "RGBA").save(buffer, format="PNG", optimize=True)
    to_lonlat = Transformer.from_crs(_MERCATOR, "EPSG:4326", always_xy=True)
    w, s = to_lonlat.transform(left, top - height * size)
    e, n = to_lonlat.transform(left + width * size, top)
    return Overlay(buffer.getvalue(), (w, s, e, n))


def colours(confidence: np.ndarray, low: float, high: float) -> list[str]:
    """The ramp colour of each confidence between ``low`` and ``high``."""
    span = max(high - low, 1e-9)
    index = np.clip(((confidence - low) / span * len(RAMP)).astype(int), 0, len(RAMP) - 1)
    return [RAMP[i] for i in index]


def _buildings(frame: gpd.GeoDataFrame, low: float, high: float) -> dict[str, Any]:
    """The footprints as GeoJSON with a colour and the popup's attributes."""
    kept = [c for c in POPUP_COLUMNS if c in frame.columns]
    out = frame[[*kept, "geometry"]].copy()
    out["_colour"] = colours(out["confidence"].to_numpy(float), low, high)
    out["geometry"] = out.geometry.set_precision(1e-7)  # ~1 cm: smaller, same drawing
    return json.loads(out.to_json(drop_id=True))


def _squares(frame: gpd.GeoDataFrame, max_squares: int) -> tuple[dict[str, Any], float]:
    """Building counts in squares of a lon/lat grid (at most about ``max_squares``)."""
    points = frame.geometry.representative_point()
    lon, lat = points.x.to_numpy(), points.y.to_numpy()
    span = max(lon.max() - lon.min(), lat.max() - lat.min(), 1e-6)
    step = span / math.sqrt(max_squares)
    ix = np.floor((lon - lon.min()) / step).astype(np.int64)
    iy = np.floor((lat - lat.min()) / step).astype(np.int64)
    keys, counts = np.unique(np.stack([ix, iy], axis=1), axis=0, return_counts=True)
    top = counts.max()
    features = []
    for (i, j), count in zip(keys, counts, strict=True):
        w, s = lon.min() + i * step, lat.min() + j * step
        ring = [[w, s], [w + step, s], [w + step, s + step], [w, s + step], [w, s]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "buildings": int(count),
                    "_colour": RAMP[min(len(RAMP) - 1, int(len(RAMP) * count / (top + 1)))],
                },
            }
        )
    metres = step * 111_320 * math.cos(math.radians(float(lat.mean())))
    return {"type": "FeatureCollection", "features": features}, metres


def render(
    footprints: gpd.GeoDataFrame,
    *,
    title: str,
    region: dict[str, Any] | None = None,
    overlay: Overlay | None = None,
    basemap: str | None = None,
    max_features: int = MAX_FEATURES,
) -> str:
    """The map page: footprints over the imagery, a legend, popups, the region's outline.

    Args:
        footprints: the v3 columns in EPSG:4326 (``shard_read.read_footprints``).
        title: the page title and the legend's heading.
        region: a GeoJSON geometry drawn as an outline.
        overlay: imagery drawn under the footprints.
        basemap: an XYZ tile URL template (needs the network when the page is opened).
        max_features: above this many buildings, counts per grid square are drawn instead.

    Returns:
        The HTML text, with Leaflet's script and style inlined.
    """
    count = len(footprints)
    conf = footprints["confidence"].to_numpy(float) if count else np.array([0.0, 1.0])
    low, high = float(conf.min()), float(conf.max())
    if count > max_features:
        layer, metres = _squares(footprints, max(1, min(MAX_SQUARES, max_features // 10)))
        legend = (
            f"{count:,} buildings: more than {max_features:,}, so drawn as the number of "
            f"buildings in squares of about {metres:,.0f} m (darkest: fewest)"
        )
        kind = "squares"
    else:
        layer = (
            _buildings(footprints, low, high)
            if count
            else {"type": "FeatureCollection", "features": []}
        )
        legend = f"{count:,} buildings, coloured by confidence ({low:.2f} to {high:.2f})"
        kind = "buildings"
    data = {
        "kind": kind,
        "layer": layer,
        "region": region,
        "overlay": None
        if overlay is None
        else {
            "src": "data:image/png;base64," + base64.b64encode(overlay.png).decode("ascii"),
            "bounds": overlay.bounds,
        },
        "basemap": basemap,
        "ramp": list(RAMP),
        "low": low,
        "high": high,
        "legend": legend,
        "title": html.escape(title),
    }
    return _PAGE.format(
        title=html.escape(title),
        css=_asset("leaflet.css"),
        js=_asset("leaflet.js"),
        data=json.dumps(data, separators=(",", ":")).replace("</", "<\\/"),
        script=_SCRIPT,
    )


def _asset(name: str) -> str:
    return resource("web", "leaflet", name).read_text(encoding="utf-8")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<!-- Leaflet 1.9.4 (BSD-2-Clause, (c) Volodymyr Agafonkin, CloudMade), inlined -->
<style>{css}</style>
<style>html,body,#map{{height:100%;margin:0}}body{{background:#222}}
.ob-legend{{background:#fff;padding:6px 10px;font:13px sans-serif;max-width:22em;border-radius:4px}}
.ob-legend i{{display:inline-block;width:14px;height:14px;margin-right:2px}}
.ob-popup td{{padding:0 6px 0 0;font:12px sans-serif}}</style>
</head><body><div id="map"></div>
<script>{js}</script>
<script id="ob-data" type="application/json">{data}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = """
const D = JSON.parse(document.getElementById('ob-data').textContent);
const map = L.map('map', {preferCanvas: false, zoomSnap: 0.25});
if (D.basemap) L.tileLayer(D.basemap, {maxZoom: 22}).addTo(map);
let bounds = null;
if (D.overlay) {
  const b = D.overlay.bounds;
  const box = [[b[1], b[0]], [b[3], b[2]]];
  L.imageOverlay(D.overlay.src, box).addTo(map);
  bounds = L.latLngBounds(box);
}
const cls = D.kind === 'squares' ? 'ob-square' : 'ob-building';
const layer = L.geoJSON(D.layer, {
  style: f => ({color: f.properties._colour, weight: 1, fillOpacity: 0.45, className: cls}),
  onEachFeature: (f, l) => {
    const rows = Object.entries(f.properties).filter(([k]) => !k.startsWith('_'))
      .map(([k, v]) => '<tr><td>' + k + '</td><td>' + v + '</td></tr>').join('');
    l.bindPopup('<table class="ob-popup">' + rows + '</table>');
  }
}).addTo(map);
if (D.layer.features.length) bounds = bounds ? bounds.extend(layer.getBounds()) : layer.getBounds();
if (D.region) {
  const outline = L.geoJSON(D.region, {style: {color: '#ff7800', weight: 2, fill: false,
    dashArray: '6 4', className: 'ob-region'}, interactive: false}).addTo(map);
  bounds = bounds ? bounds.extend(outline.getBounds()) : outline.getBounds();
}
if (bounds) map.fitBounds(bounds); else map.setView([0, 0], 2);
const legend = L.control({position: 'bottomright'});
legend.onAdd = () => {
  const div = L.DomUtil.create('div', 'ob-legend');
  const swatches = D.ramp.map(c => '<i style="background:' + c + '"></i>').join('');
  const ends = D.kind === 'squares' ? 'fewest &rarr; most' :
    D.low.toFixed(2) + ' &rarr; ' + D.high.toFixed(2);
  div.innerHTML = '<b>' + D.title + '</b><br>' + swatches + ' ' + ends + '<br>' +
    D.legend + (D.region ? '<br><span style="color:#ff7800">- - -</span> region' : '');
  return div;
};
legend.addTo(map);
"""
