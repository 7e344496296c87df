"""Footprint files written part by part, so that no more than one part is ever in memory.

A shard of a continental job holds the footprints of thousands of tiles. ``write_csv_gz`` and
``write_geoparquet`` take all of its rows at once; :func:`write_parts` takes them as parts (one
tile's rows each, loaded when needed) and writes the same bytes: rows are ordered along the S2
curve of their centroid, and a tile owns exactly the buildings whose centroid's S2 cell lies in
its own cell, so one tile's rows form one unbroken run of that order. The parts are put in order
by their first S2 key, and the files are written by appending each part's lines and rows.

Neither pyarrow nor geopandas writes a GeoParquet file incrementally with file-wide metadata
(its bbox and geometry types must be known when the file is opened), so each part comes with a
:func:`summarise` of its rows, taken where the rows were in memory anyway: the parts are read
once, when they are written.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from open_buildings.geo import footprints
from open_buildings.geo.cells import cell_ids

#: geopandas' GeoParquet names for shapely's type ids (a LinearRing is written as a LineString).
_TYPE_NAMES = (
    "Point",
    "LineString",
    "LineString",
    "Polygon",
    "MultiPoint",
    "MultiLineString",
    "MultiPolygon",
    "GeometryCollection",
)


class InterleavedPartsError(ValueError):
    """The parts' S2 ranges overlap, so they cannot be written one after another in order."""


@dataclass(frozen=True)
class PartSummary:
    """What the writer needs of a part before it opens the files.

    Attributes:
        first: the smallest S2 leaf key of its centroids.
        last: the largest.
        rows: its footprints.
        bounds: ``(min_lon, min_lat, max_lon, max_lat)`` of its geometries.
        types: its geometry types as GeoParquet names them.
    """

    first: int
    last: int
    rows: int
    bounds: tuple[float, float, float, float]
    types: frozenset[str]


def summarise(frame: gpd.GeoDataFrame) -> PartSummary:
    """Summarise a non-empty part: S2 key range, row count, bounds and geometry types."""
    keys = cell_ids(frame["longitude"].to_numpy(), frame["latitude"].to_numpy())
    geoms = frame.geometry.to_numpy()
    ids = shapely.get_type_id(geoms)
    z = shapely.has_z(geoms)
    types = {_TYPE_NAMES[i] + (" Z" if has_z else "") for i, has_z in zip(ids, z) if i >= 0}
    return PartSummary(
        int(keys.min()),
        int(keys.max()),
        len(frame),
        tuple(float(v) for v in frame.total_bounds),
        frozenset(types),
    )


def write_parts(
    parts: Sequence[tuple[PartSummary, Callable[[], gpd.GeoDataFrame]]],
    targets: Mapping[str, Path],
    *,
    overwrite: bool = False,
    row_group_size: int = footprints.DEFAULT_ROW_GROUP_SIZE,
    on_written: Callable[[footprints.FileRecord], None] | None = None,
) -> list[footprints.FileRecord]:
    """Write the footprints of ``parts`` as ``write_csv_gz`` / ``write_geoparquet`` would.

    Args:
        parts: ``(summary, loader)`` per non-empty part: :func:`summarise` of its rows, taken
            where they were made, and a loader returning them (EPSG:4326), called once, when the
            part's turn comes. Rows whose centroids share an S2 leaf cell keep their order within
            the part, as the whole-frame writers keep theirs.
        targets: ``{"csv.gz": path, "parquet": path}``, either or both.
        overwrite: replace existing files.
        row_group_size: rows per Parquet row group.
        on_written: called with each file's record as soon as that file is in place.

    Returns:
        A record per file, in the order of ``targets``; none when there are no parts.

    Raises:
        InterleavedPartsError: when the parts' S2 key ranges overlap (write their concatenation
            with ``write_csv_gz`` / ``write_geoparquet`` instead).
    """
    if not parts:
        return []
    summaries = sorted(parts, key=lambda s: s[0].first)
    for (a, _), (b, _) in zip(summaries, summaries[1:]):
        if a.last >= b.first:
            raise InterleavedPartsError("the parts' S2 ranges overlap")
    boxes = np.array([s.bounds for s, _ in summaries])
    bbox = (*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist())
    types = sorted(set().union(*(s.types for s, _ in summaries)))
    rows = sum(s.rows for s, _ in summaries)
    records = []
    with contextlib.ExitStack() as unwind:  # an error leaves no file, and any earlier one intact
        files = [unwind.enter_context(contextlib.ExitStack()) for _ in targets]
        writers = [
            _writer(
                fmt,
                file.enter_context(footprints.atomic_write(path, overwrite=overwrite)),
                bbox,
                types,
                row_group_size,
            )
            for file, (fmt, path) in zip(files, targets.items())
        ]
        for file, writer in zip(files, writers):
            file.callback(writer.discard)  # after an error, before the temp file goes
        for _, load in summaries:
            chunk = footprints.prepare(load())
            for writer in writers:
                writer.append(chunk)
        for writer, file, (fmt, path) in zip(writers, files, targets.items()):
            writer.close()
            file.close()  # the file is renamed into place here, one after the other
            records.append(footprints.file_record(Path(path), fmt, rows, bbox))
            if on_written is not None:
                on_written(records[-1])
    return records


class _CsvWriter:
    """Appends CSV lines to a gzip stream; the header once."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._gz = footprints.gzip_stream(handle)
        self._header = True

    def append(self, rows: gpd.GeoDataFrame) -> None:
        self._gz.write(footprints.csv_text(rows, header=self._header))
        self._header = False

    def close(self) -> None:
        self._gz.close()

    discard = close


class _ParquetWriter:
    """Appends Arrow rows in row groups of exactly ``row_group_size``, as ``write_table`` cuts."""

    def __init__(
        self, handle: IO[bytes], bbox: tuple[float, ...], types: list[str], row_group_size: int
    ) -> None:
        self._handle = handle
        self._bbox, self._types = list(bbox), types
        self._size = row_group_size
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._rows = 0

    def append(self, rows: gpd.GeoDataFrame) -> None:
        table = footprints.arrow_table(rows)
        if self._writer is None:
            self._schema = _file_schema(table.schema, self._bbox, self._types)
            self._writer = pq.ParquetWriter(self._handle, self._schema, compression="snappy")
        self._pending.append(table.cast(self._schema))
        self._rows += len(table)
        while self._rows >= self._size:
            self._flush(self._size)

    def _flush(self, count: int) -> None:
        table = pa.concat_tables(self._pending)
        self._writer.write_table(table.slice(0, count).combine_chunks(), row_group_size=self._size)
        rest = table.slice(count)
        self._pending, self._rows = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self._rows:
            self._flush(self._rows)
        self._writer.close()

    def discard(self) -> None:
        if self._writer is not None and self._writer.is_open:
            self._writer.close()


def _writer(
    fmt: str, handle: IO[bytes], bbox: tuple[float, ...], types: list[str], size: int
) -> _CsvWriter | _ParquetWriter:
    if fmt == "csv.gz":
        return _CsvWriter(handle)
    if fmt == "parquet":
        return _ParquetWriter(handle, bbox, types, size)
    raise ValueError(f"unknown footprint format {fmt!r}; expected 'csv.gz' or 'parquet'")


def _file_schema(schema: pa.Schema, bbox: list[float], types: list[str]) -> pa.Schema:
    """A part's schema with the file-wide bbox and geometry types in its GeoParquet metadata."""
    metadata = dict(schema.metadata)
    geo = json.loads(metadata[b"geo"])
    column = geo["columns"][geo["primary_column"]]
    column["bbox"] = bbox
    column["geometry_types"] = types
    metadata[b"geo"] = json.dumps(geo).encode("utf-8")
    return schema.with_metadata(metadata)
