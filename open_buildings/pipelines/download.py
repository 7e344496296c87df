"""``ob-download``: the footprints inside a region, from a sharded dataset, streamed.

The source is a folder, an ``https://`` URL or a ``gs://`` bucket written by ``ob-infer`` or laid
out like the published Open Buildings v3 data (:mod:`open_buildings.geo.shard_source`). Only the
shards whose S2 cell touches the region are opened: the region is covered at the shard level and
each candidate file is looked up by name, so the rest of a continent is never listed or read.
Each shard is read in chunks of rows, filtered, and appended to the output, so memory stays flat
however large the dataset is.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from open_buildings.errors import ConfigError
from open_buildings.geo import footprints
from open_buildings.geo.shard_read import SkipLog, shard_chunks
from open_buildings.geo.shard_source import detect_layout, open_binary, shards_for, with_header_of
from open_buildings.geo.vector_out import DRIVERS, VectorWriter

CHUNK_ROWS = 100_000
FORMATS = ("csv", "parquet", "geojson", "geojsonl", "gpkg", "fgb")
EXTENSIONS = {
    "csv": ".csv.gz",
    "parquet": ".parquet",
    "geojson": ".geojson",
    "geojsonl": ".geojsonl",
    "gpkg": ".gpkg",
    "fgb": ".fgb",
}


def read_chunks(
    path: str,
    chunk_rows: int = CHUNK_ROWS,
    *,
    skip_bad: bool = False,
    skipped: SkipLog | None = None,
    header: bool = True,
    bbox: tuple[float, float, float, float] | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield a shard's rows in chunks, geometry as shapely objects, with the schema columns.

    Args:
        path: a ``.csv.gz`` or ``.parquet`` shard (local or URL).
        chunk_rows: rows per chunk.
        header: a CSV shard starts with a header row (else it is read with the v3 names).
        skip_bad: skip damaged rows and files (counted in ``skipped``) instead of raising.
        skipped: where skipped rows and files are counted.
        bbox: a GeoParquet shard's row groups outside this lon/lat box are not read (over
            HTTP or gs://, not fetched).

    Raises:
        ShardError: a damaged file or row, naming it (:mod:`open_buildings.geo.shard_read`).
    """
    yield from shard_chunks(
        path, open_binary, chunk_rows, skip_bad=skip_bad, skipped=skipped, header=header, bbox=bbox
    )


def select(frame: pd.DataFrame, region: Any, min_confidence: float) -> pd.DataFrame:
    """Keep the buildings that intersect the region and reach ``min_confidence``.

    Args:
        frame: a chunk from :func:`read_chunks`.
        region: the region in lon/lat (prepare it with ``shapely.prepare`` for speed).
        min_confidence: the lowest confidence kept.

    Returns:
        The kept rows.
    """
    keep = frame["confidence"].to_numpy(dtype=float) >= min_confidence
    geoms = frame["geometry"].to_numpy()
    keep &= shapely.intersects(region, geoms)
    return frame[keep]


class _Writer:
    """Streams chunks into one output file (CSV.gz, GeoParquet 1.1 or GeoJSON)."""

    def __init__(self, handle: IO[bytes], fmt: str, *, gzip_csv: bool = True) -> None:
        self._handle = handle
        self._gzip_csv = gzip_csv
        self._fmt = fmt
        self._started = False
        self._parquet: pq.ParquetWriter | None = None
        self._gzip: IO[bytes] | None = None
        self._features = 0
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty and self._started:
            return
        self.rows += len(frame)
        if self._fmt == "csv":
            self._write_csv(frame)
        elif self._fmt in ("geojson", "geojsonl"):
            self._write_geojson(frame)
        else:
            self._write_parquet(frame)
        self._started = True

    def _write_csv(self, frame: pd.DataFrame) -> None:
        if self._gzip is None:
            self._gzip = (
                gzip.GzipFile(filename="", mode="wb", fileobj=self._handle, mtime=0)
                if self._gzip_csv
                else self._handle
            )
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if not self._started:
            writer.writerow(footprints.SCHEMA_COLUMNS)
        wkt = shapely.to_wkt(frame["geometry"].to_numpy(), rounding_precision=-1)
        for row, geometry in zip(frame.itertuples(index=False), wkt):
            writer.writerow(
                [
                    f"{row.latitude:.8f}",
                    f"{row.longitude:.8f}",
                    f"{row.area_in_meters:.4f}",
                    f"{row.confidence:.4f}",
                    geometry.replace("POLYGON ((", "POLYGON((", 1),
                    row.full_plus_code,
                ]
            )
        self._gzip.write(out.getvalue().encode("utf-8"))

    def _write_geojson(self, frame: pd.DataFrame) -> None:
        lines = self._fmt == "geojsonl"  # one Feature per line (GeoJSONSeq), no collection
        if not self._started and not lines:
            self._handle.write(b'{"type":"FeatureCollection","features":[\n')
        geometries = shapely.to_geojson(frame["geometry"].to_numpy())
        for row, geometry in zip(frame.itertuples(index=False), geometries):
            props = {
                "latitude": row.latitude,
                "longitude": row.longitude,
                "area_in_meters": row.area_in_meters,
                "confidence": row.confidence,
                "full_plus_code": row.full_plus_code,
            }
            feature = {"type": "Feature", "properties": props, "geometry": json.loads(geometry)}
            if lines:
                self._handle.write(json.dumps(feature).encode("utf-8") + b"\n")
                continue
            prefix = b",\n" if self._features else b""
            self._handle.write(prefix + json.dumps(feature).encode("utf-8"))
            self._features += 1

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        geoms = frame["geometry"].to_numpy()
        bounds = shapely.bounds(geoms) if len(geoms) else np.empty((0, 4))
        table = pa.table(
            {
                "latitude": pa.array(frame["latitude"].to_numpy(dtype=float)),
                "longitude": pa.array(frame["longitude"].to_numpy(dtype=float)),
                "area_in_meters": pa.array(frame["area_in_meters"].to_numpy(dtype=float)),
                "confidence": pa.array(frame["confidence"].to_numpy(dtype=float)),
                "geometry": pa.array(list(shapely.to_wkb(geoms)), type=pa.binary()),
                "full_plus_code": pa.array(
                    frame["full_plus_code"].astype(str).tolist(), type=pa.string()
                ),
                "bbox": pa.StructArray.from_arrays(
                    [pa.array(bounds[:, i], type=pa.float64()) for i in range(4)],
                    names=["xmin", "ymin", "xmax", "ymax"],
                ),
            }
        )
        if self._parquet is None:
            geo = json.dumps(self._geo_metadata()).encode("utf-8")
            schema = table.schema.with_metadata({b"geo": geo})
            self._parquet = pq.ParquetWriter(self._handle, schema)
        self._parquet.write_table(table.replace_schema_metadata(self._parquet.schema.metadata))

    def close(self) -> None:
        if self._fmt == "csv":
            if not self._started:
                self._write_csv(pd.DataFrame(columns=footprints.SCHEMA_COLUMNS))
            if self._gzip is not None and self._gzip is not self._handle:
                self._gzip.close()
        elif self._fmt == "geojson":
            if not self._started:
                self._handle.write(b'{"type":"FeatureCollection","features":[\n')
            self._handle.write(b"\n]}\n")
        elif self._fmt == "parquet":
            if self._parquet is None:
                self._write_parquet(_empty_frame())
            self._parquet.close()

    def _geo_metadata(self) -> dict[str, Any]:
        # Written before any row (the file streams), so no overall "bbox"; the per-row bbox
        # covering column lets readers skip row groups instead.
        column: dict[str, Any] = {
            "encoding": "WKB",
            "geometry_types": ["Polygon"],
            "covering": {
                "bbox": {
                    "xmin": ["bbox", "xmin"],
                    "ymin": ["bbox", "ymin"],
                    "xmax": ["bbox", "xmax"],
                    "ymax": ["bbox", "ymax"],
                }
            },
        }
        return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def _empty_frame() -> pd.DataFrame:
    frame = pd.DataFrame({c: np.empty(0) for c in footprints.SCHEMA_COLUMNS[:4]})
    frame["geometry"] = np.empty(0, dtype=object)
    frame["full_plus_code"] = np.empty(0, dtype=object)
    return frame


def download(
    region: shapely.Geometry,
    source: str,
    out: str | Path,
    *,
    fmt: str = "csv",
    min_confidence: float = 0.0,
    overwrite: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    skip_bad: bool = False,
    progress: bool = False,
    layout: str = "auto",
) -> dict[str, Any]:
    """Write the buildings of ``source`` that intersect ``region`` to one file, streaming.

    Args:
        region: the region in lon/lat.
        source: the dataset root (see :func:`detect_layout`).
        out: the file to write.
        fmt: ``"csv"`` (Open Buildings v3 columns; gzipped when ``out`` ends in ``.gz``),
            ``"parquet"`` (GeoParquet 1.1 with a bbox covering column) or ``"geojson"``.
        min_confidence: drop buildings below this confidence.
        overwrite: replace an existing ``out``.
        chunk_rows: rows read at a time.
        skip_bad: skip damaged rows and files with one warning instead of stopping at the first
            (nothing is written then: the output appears only when complete).
        progress: show a progress bar of shards read and buildings kept (on stderr).
        layout: ``"auto"`` or the layout ``source`` has (``geo.shard_source.LAYOUTS``).

    Returns:
        ``{"rows", "shards", "out", "skipped"}`` (``skipped``: a :class:`SkipLog`).

    Raises:
        ConfigError: for an unknown format.
        OutputExistsError: if ``out`` exists and ``overwrite`` is False.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    found = detect_layout(source, layout)
    shards = shards_for(region, found)
    if shards and layout == "auto":
        found = with_header_of(found, shards[0])
    bbox = tuple(shapely.bounds(region))
    shapely.prepare(region)
    skipped = SkipLog()

    def selected() -> Iterator[pd.DataFrame]:
        from tqdm import tqdm

        kept = 0
        bar = tqdm(shards, unit="shard", disable=not progress, desc="ob-download")
        for shard in bar:
            chunks = read_chunks(
                shard,
                chunk_rows,
                skip_bad=skip_bad,
                skipped=skipped,
                header=found.header,
                bbox=bbox,  # type: ignore[arg-type]
            )
            for chunk in chunks:
                frame = select(chunk, region, min_confidence)
                kept += len(frame)
                bar.set_postfix(buildings=f"{kept:,}")
                yield frame

    if fmt in DRIVERS:  # written by GDAL, which needs a path rather than a stream
        with VectorWriter(out, fmt, overwrite=overwrite) as writer:
            for frame in selected():
                writer.write(frame)
            if not writer.rows:
                writer.write(_empty_frame())
    else:
        with footprints.atomic_write(out, overwrite=overwrite) as handle:
            writer = _Writer(handle, fmt, gzip_csv=str(out).endswith(".gz"))
            for frame in selected():
                writer.write(frame)
            writer.close()
    skipped.warn(f"the shards in {source}")
    return {"rows": writer.rows, "shards": shards, "out": str(out), "skipped": skipped}
