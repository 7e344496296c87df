"""The tiling grid (interface stub; implemented in this issue)."""

from __future__ import annotations

from dataclasses import dataclass

from affine import Affine


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
        left, top = self.transform * (0, 0)
        right, bottom = self.transform * (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))
