"""Reading footprint shards (``.csv.gz`` and ``.parquet``) strictly, in chunks of rows.

A damaged file is an error that names it (not gzipped, truncated, not Parquet, a missing
column); a damaged row (WKT or WKB that does not parse, a NaN or infinite vertex, a geometry that
is not a polygon) is an error that names the file and the row. With ``skip_bad`` both are
skipped instead and counted in a :class:`SkipLog`, which the commands turn into one warning:
nothing damaged is ever used, and nothing is dropped without a word.
"""

from __future__ import annotations

import functools
import gzip
import os
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from open_buildings.errors import ShardError
from open_buildings.geo.footprints import CSV_SUFFIX, PARQUET_SUFFIX, SCHEMA_COLUMNS

__all__ = ["SkipLog", "bad_geometries", "non_finite", "read_footprints", "shard_chunks"]

_HINT = "; pass --skip-bad to skip what is damaged (with a warning) and go on"


@dataclass
class SkipLog:
    """What ``skip_bad`` left out: rows and whole (rest of) files, with the first reasons."""

    rows: int = 0
    files: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def add(self, reason: str, rows: int = 0, file: str | None = None) -> None:
        """Count skipped rows (or a skipped file) and keep the first few reasons."""
        self.rows += rows
        if file is not None:
            self.files.append(file)
        if len(self.reasons) < 5:
            self.reasons.append(reason)

    def warn(self, what: str = "footprints") -> None:
        """Warn once about everything skipped (nothing when nothing was)."""
        if not (self.rows or self.files):
            return
        warnings.warn(
            f"--skip-bad: skipped {self.rows:,} damaged row(s) and {len(self.files)} damaged "
            f"file(s) of {what}: " + "; ".join(self.reasons),
            UserWarning,
            stacklevel=2,
        )


def non_finite(geoms: np.ndarray) -> np.ndarray:
    """Return a mask of the geometries that are missing or have a NaN or infinite coordinate."""
    bad = shapely.is_missing(geoms)
    coords, index = shapely.get_coordinates(geoms, return_index=True)
    if len(coords):
        bad[np.unique(index[~np.isfinite(coords).all(axis=1)])] = True
    return bad


def bad_geometries(geoms: np.ndarray) -> np.ndarray:
    """Return a mask of shard geometries that are missing, not polygons, empty or not finite."""
    kind = shapely.get_type_id(geoms)
    return non_finite(geoms) | ~np.isin(kind, (3, 6)) | shapely.is_empty(geoms)


def shard_chunks(
    path: str,
    opener: Callable[[str], IO[bytes]],
    chunk_rows: int,
    *,
    skip_bad: bool = False,
    skipped: SkipLog | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    header: bool = True,
) -> Iterator[pd.DataFrame]:
    """Yield a shard's rows in chunks with the v3 columns, geometry as shapely polygons.

    Args:
        path: a ``.csv.gz`` or ``.parquet`` shard (for messages, and for ``opener``).
        opener: opens ``path`` for binary reading (a local file, a bucket object).
        chunk_rows: rows per chunk.
        skip_bad: skip damaged rows, and the rest of a damaged file, instead of raising.
        skipped: where skipped rows and files are counted (required with ``skip_bad``).
        bbox: ``(min_lon, min_lat, max_lon, max_lat)``: Parquet row groups whose ``bbox``
            covering column lies outside it are not read (rows are not filtered here).
        header: a CSV shard starts with a header row; False reads it with the v3 column names
            (the published ``..._gzip_no_header`` layout). A headerless shard whose first row is
            a header, or the reverse, is an error naming the file.

    Raises:
        ShardError: a damaged file or row, naming it, unless ``skip_bad``.
    """
    log = skipped if skipped is not None else SkipLog()
    if path.endswith(PARQUET_SUFFIX):
        read = functools.partial(_parquet_frames, bbox=bbox)
    else:
        read = functools.partial(_csv_frames, header=header)
    if not path.endswith((PARQUET_SUFFIX, CSV_SUFFIX)):
        raise ShardError(f"{path} is not a footprint shard (*{CSV_SUFFIX} or *{PARQUET_SUFFIX})")
    first_row = 0
    try:
        with opener(path) as handle:
            for frame, geoms in read(path, handle, chunk_rows):
                bad = bad_geometries(geoms)
                if bad.any():
                    row = first_row + int(np.flatnonzero(bad)[0])
                    reason = (
                        f"{path}: row {row + 1:,} has no readable polygon (WKT/WKB that does not "
                        "parse, a NaN vertex, or not a polygon)"
                    )
                    if not skip_bad:
                        raise ShardError(reason + _HINT)
                    log.add(reason, rows=int(bad.sum()))
                first_row += len(frame)
                frame = frame.assign(geometry=geoms)[~bad].reset_index(drop=True)
                yield frame[SCHEMA_COLUMNS]
    except ShardError as exc:
        if not skip_bad:
            raise
        log.add(str(exc), file=path)


def _damaged(path: str, exc: BaseException, rows: int) -> ShardError:
    return ShardError(
        f"{path} is damaged after {rows:,} row(s) ({type(exc).__name__}: {exc}); download or "
        "write it again" + _HINT
    )


def _csv_frames(
    path: str, handle: IO[bytes], chunk_rows: int, header: bool = True
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    rows = 0
    names = {} if header else {"header": None, "names": list(SCHEMA_COLUMNS)}
    with gzip.open(handle, "rt", encoding="utf-8", newline="") as text:
        try:
            chunks = pd.read_csv(
                text,
                dtype={"full_plus_code": str, "geometry": str},
                chunksize=chunk_rows,
                **names,
            )
            for frame in chunks:
                missing = [c for c in SCHEMA_COLUMNS if c not in frame.columns]
                if missing:
                    looks_headerless = len(frame.columns) == len(SCHEMA_COLUMNS)
                    raise ShardError(
                        f"{path} lacks the column(s) {missing}; an Open Buildings v3 shard has "
                        f"{list(SCHEMA_COLUMNS)}"
                        + (
                            " (its first row looks like data: a headerless shard belongs in a "
                            "polygons_s2_level_<L>_gzip_no_header/ folder)"
                            if looks_headerless
                            else ""
                        )
                        + _HINT
                    )
                if not header and rows == 0 and frame["geometry"].iloc[:1].eq("geometry").any():
                    raise ShardError(
                        f"{path} starts with a header row, but its folder's name says the "
                        "shards have none (..._gzip_no_header); move it to a ..._gzip/ folder"
                    )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # GEOS on a bad WKT
                    text_geoms = frame["geometry"].to_numpy()
                    geoms = shapely.from_wkt(
                        np.where(pd.isna(text_geoms), None, text_geoms), on_invalid="ignore"
                    )
                rows += len(frame)
                yield frame, geoms
        except gzip.BadGzipFile as exc:
            raise ShardError(
                f"{path} is not gzipped ({exc}); a .csv.gz shard must be gzip-compressed" + _HINT
            ) from exc
        except (EOFError, zlib.error, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise _damaged(path, exc, rows) from exc


def _row_groups(reader: pq.ParquetFile, bbox: tuple[float, float, float, float]) -> list[int]:
    """The row groups whose ``bbox`` covering column statistics may meet ``bbox``."""
    meta = reader.metadata
    paths = [meta.schema.column(j).path for j in range(meta.num_columns)]
    wanted = {f"bbox.{k}": paths.index(f"bbox.{k}") for k in ("xmin", "ymin", "xmax", "ymax")
              if f"bbox.{k}" in paths}  # fmt: skip
    if len(wanted) < 4:
        return list(range(meta.num_row_groups))
    keep = []
    for i in range(meta.num_row_groups):
        stats = {k: meta.row_group(i).column(j).statistics for k, j in wanted.items()}
        if any(st is None or not st.has_min_max for st in stats.values()):
            keep.append(i)
        elif not (
            stats["bbox.xmin"].min > bbox[2]
            or stats["bbox.xmax"].max < bbox[0]
            or stats["bbox.ymin"].min > bbox[3]
            or stats["bbox.ymax"].max < bbox[1]
        ):
            keep.append(i)
    return keep


def _parquet_frames(
    path: str,
    handle: IO[bytes],
    chunk_rows: int,
    bbox: tuple[float, float, float, float] | None = None,
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    rows = 0
    try:
        reader = pq.ParquetFile(handle)
        missing = [c for c in SCHEMA_COLUMNS if c not in reader.schema_arrow.names]
        if missing:
            raise ShardError(
                f"{path} lacks the column(s) {missing}; an Open Buildings shard has "
                f"{list(SCHEMA_COLUMNS)}" + _HINT
            )
        groups = _row_groups(reader, bbox) if bbox is not None else None
        if groups == []:
            return
        batches = reader.iter_batches(
            batch_size=chunk_rows, row_groups=groups, columns=list(SCHEMA_COLUMNS)
        )
        for batch in batches:
            frame = batch.to_pandas()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                geoms = shapely.from_wkb(frame["geometry"].to_numpy(), on_invalid="ignore")
            rows += len(frame)
            yield frame, geoms
    except (pa.ArrowException, OSError) as exc:
        raise _damaged(path, exc, rows) from exc


def read_footprints(
    path: str | os.PathLike,
    *,
    bbox: tuple[float, float, float, float] | None = None,
    skip_bad: bool = False,
    skipped: SkipLog | None = None,
) -> gpd.GeoDataFrame:
    """Read footprints from a ``.csv.gz``, a ``.parquet``, or a folder of them.

    In a folder, a shard written in both formats (``x.csv.gz`` and ``x.parquet``) is read once,
    from the Parquet file. Files are concatenated in name order.

    Args:
        path: a file or a folder.
        bbox: ``(min_lon, min_lat, max_lon, max_lat)``; keep only rows whose geometry's bounding
            box intersects it (Parquet row groups outside it are not read).
        skip_bad: skip damaged rows and files (counted in ``skipped``) instead of raising.
        skipped: where skipped rows and files are counted.

    Returns:
        A GeoDataFrame in EPSG:4326 with the ``SCHEMA_COLUMNS``.

    Raises:
        FileNotFoundError: if ``path`` does not exist or a folder holds no footprint files.
        ShardError: for a file that is not a shard, or a damaged one (unless ``skip_bad``).
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"no footprints at {source}")
    files = _footprint_files(source) if source.is_dir() else [source]
    if not files:
        raise FileNotFoundError(f"{source} holds no *{CSV_SUFFIX} or *{PARQUET_SUFFIX} files")
    frames = [
        frame
        for file in files
        for frame in shard_chunks(
            str(file), _open_local, 100_000, skip_bad=skip_bad, skipped=skipped, bbox=bbox
        )
    ]
    out = pd.concat(frames, ignore_index=True) if frames else _empty()
    frame = gpd.GeoDataFrame(out, geometry="geometry", crs="EPSG:4326")
    if bbox is not None and len(frame):
        minx, miny, maxx, maxy = shapely.bounds(frame.geometry.to_numpy()).T
        inside = (minx <= bbox[2]) & (maxx >= bbox[0]) & (miny <= bbox[3]) & (maxy >= bbox[1])
        frame = frame[inside].reset_index(drop=True)
    return frame


def _open_local(path: str) -> IO[bytes]:
    return open(path, "rb")  # noqa: SIM115 - closed by shard_chunks


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: np.empty(0) for c in SCHEMA_COLUMNS[:4]})
    frame["geometry"] = np.empty(0, dtype=object)
    frame["full_plus_code"] = np.empty(0, dtype=object)
    return frame[SCHEMA_COLUMNS]


def _footprint_files(folder: Path) -> list[Path]:
    chosen: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        name = file.name
        if name.startswith(".") or not file.is_file():
            continue
        for suffix in (PARQUET_SUFFIX, CSV_SUFFIX):
            if name.endswith(suffix):
                stem = name[: -len(suffix)]
                if suffix == PARQUET_SUFFIX or stem not in chosen:
                    chosen[stem] = file
    return [chosen[stem] for stem in sorted(chosen)]
