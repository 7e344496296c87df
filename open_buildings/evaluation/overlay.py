"""Footprints drawn over the imagery they came from (matplotlib PNG)."""

from __future__ import annotations

import os

import geopandas as gpd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import shapely  # noqa: E402

from open_buildings.geo.grid import PixelGrid  # noqa: E402


def plot_footprints(
    rgb: np.ndarray,
    valid: np.ndarray,
    grid: PixelGrid,
    path: str | os.PathLike[str],
    *,
    predictions: gpd.GeoDataFrame | None = None,
    truth: gpd.GeoDataFrame | None = None,
    title: str = "",
) -> None:
    """Draw predicted (and optionally true) footprints over an image, cropped to its imagery.

    Args:
        rgb: uint8 ``(3, H, W)`` image on ``grid``.
        valid: bool ``(H, W)``: where there is imagery (the plot is cropped to it).
        grid: the image's pixel grid (metric CRS).
        path: the PNG to write.
        predictions: footprints (any CRS) with a ``confidence`` column, drawn in yellow.
        truth: reference footprints (any CRS), drawn as thin cyan outlines.
        title: the plot's title.
    """
    rows, cols = np.nonzero(valid)
    if rows.size == 0:
        raise ValueError("the image has no valid pixel to draw")
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    image = np.where(valid[None], rgb, 255)[:, r0:r1, c0:c1].transpose(1, 2, 0)
    inverse = ~grid.transform

    def outline(frame: gpd.GeoDataFrame, color: str, width: float) -> None:
        for geom in frame.to_crs(grid.crs).geometry:
            for part in shapely.get_parts(geom):
                ring = np.asarray(part.exterior.coords)
                col = inverse.a * ring[:, 0] + inverse.b * ring[:, 1] + inverse.c
                row = inverse.d * ring[:, 0] + inverse.e * ring[:, 1] + inverse.f
                ax.plot(col - c0, row - r0, color=color, lw=width)

    fig, ax = plt.subplots(figsize=(8, 8 * image.shape[0] / image.shape[1]))
    ax.imshow(image)
    if truth is not None:
        outline(truth, "cyan", 0.8)
    if predictions is not None:
        outline(predictions, "yellow", 1.2)
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
