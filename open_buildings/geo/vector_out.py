"""GeoPackage and FlatGeobuf output through pyogrio (GDAL), streamed chunk by chunk, atomic.

Chunks are appended to a GeoPackage beside the target, so memory stays flat however many rows
come. FlatGeobuf cannot be appended to (GDAL writes its spatial index once, at the end), so it is
converted from that GeoPackage at the end, as an Arrow stream. Either way the target appears
whole or not at all: the result is renamed onto it only when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import geopandas as gpd
import pandas as pd
import pyogrio

from open_buildings.errors import OutputExistsError

__all__ = ["DRIVERS", "VectorWriter"]

#: Format name -> GDAL driver.
DRIVERS = {"gpkg": "GPKG", "fgb": "FlatGeobuf"}
_LAYER = "buildings"


class VectorWriter:
    """Append footprint chunks to a GeoPackage or FlatGeobuf file; use as a context manager.

    Args:
        path: the file to write.
        fmt: ``"gpkg"`` or ``"fgb"``.
        overwrite: replace an existing file.

    Raises:
        OutputExistsError: if ``path`` exists and ``overwrite`` is False.
    """

    def __init__(self, path: str | os.PathLike[str], fmt: str, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise OutputExistsError(f"{self.path} exists; pass --overwrite to replace it")
        self.fmt = fmt
        self.rows = 0
        self._stage = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial.gpkg")
        self._stage.unlink(missing_ok=True)
        self._started = False

    def write(self, frame: pd.DataFrame) -> None:
        """Append a chunk with the v3 columns (``geometry`` as shapely polygons, lon/lat)."""
        if frame.empty and self._started:
            return
        chunk = gpd.GeoDataFrame(frame, geometry="geometry", crs="EPSG:4326")
        pyogrio.write_dataframe(
            chunk, self._stage, layer=_LAYER, driver="GPKG", append=self._started,
            geometry_type="Polygon",
        )  # fmt: skip
        self._started = True
        self.rows += len(frame)

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            if kind is None:
                self._finish()
        finally:
            self._stage.unlink(missing_ok=True)

    def _finish(self) -> None:
        if self.fmt == "gpkg":
            os.replace(self._stage, self.path)
            return
        final = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            with pyogrio.raw.open_arrow(self._stage, layer=_LAYER, use_pyarrow=True) as source:
                meta, reader = source
                pyogrio.raw.write_arrow(
                    reader, final, driver=DRIVERS[self.fmt], layer=_LAYER,
                    geometry_name=meta["geometry_name"] or "geometry",
                    geometry_type="Polygon", crs="EPSG:4326",
                )  # fmt: skip
            os.replace(final, self.path)
        finally:
            final.unlink(missing_ok=True)
