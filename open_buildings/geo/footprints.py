"""The footprint schema and its files: CSV.gz (Open Buildings v3), GeoParquet 1.1, a manifest.

A published Open Buildings v3 row, which ``write_csv_gz`` reproduces in form::

    latitude,longitude,area_in_meters,confidence,geometry,full_plus_code
    10.26189342,11.20633394,44.1204,0.8365,"POLYGON((11.2063575644386 10.2618536233626, ...))",
    7F2H7664+QG4P

(one line in the file).

Latitude and longitude carry 8 decimals (about 1 mm), area and confidence 4. Geometry is WKT in
lon/lat with ``WKT_DECIMALS`` = 9 decimals (about 0.1 mm, 5000 times finer than the 50 cm pixel;
the published files' 13 decimals add bytes, not information). Every file is written atomically
(temp file, fsync, rename) and byte-for-byte reproducibly, so a retried bundle writes the same
bytes; rows are ordered along the S2 curve of their centroid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

from open_buildings.errors import OutputExistsError
from open_buildings.geo.parquet_crs import with_fixed_crs

SCHEMA_COLUMNS = [
    "latitude",
    "longitude",
    "area_in_meters",
    "confidence",
    "geometry",
    "full_plus_code",
]
WKT_DECIMALS = 9
DEFAULT_ROW_GROUP_SIZE = 50_000
CSV_SUFFIX = ".csv.gz"
PARQUET_SUFFIX = ".parquet"
MANIFEST_NAME = "manifest.json"
_GZIP_LEVEL = 6
_TEMP_MARK = ".tmp-"


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """What was written: one footprint file, as the manifest lists it.

    Attributes:
        path: where the file is.
        format: ``"csv.gz"`` or ``"parquet"``.
        rows: number of footprints in it.
        bytes: file size.
        sha256: hex digest of the file's bytes.
        bbox: ``(min_lon, min_lat, max_lon, max_lat)`` of its geometries; None when empty.
    """

    path: Path
    format: str
    rows: int
    bytes: int
    sha256: str
    bbox: tuple[float, float, float, float] | None


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, *, overwrite: bool = False, mode: str = "wb"
) -> Iterator[IO]:
    """Write a file all at once or not at all.

    The data go to ``.<name>.tmp-<random>`` in the target's folder, are fsynced, then renamed over
    the target. If the body raises, the temp file is removed and the target is left untouched.
    Without ``overwrite`` the final step is a hard link, which fails if the target appeared
    meanwhile, so an existing file is never clobbered.

    Args:
        path: the file to write; its folder must exist.
        overwrite: replace ``path`` if it exists.
        mode: ``"wb"`` (bytes) or ``"w"`` (UTF-8 text).

    Yields:
        The open temp file.

    Raises:
        OutputExistsError: if ``path`` exists and ``overwrite`` is False.
        ValueError: for a mode other than ``"wb"`` or ``"w"``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    if not overwrite and target.exists():
        raise _exists(target)
    tmp = target.with_name(f".{target.name}{_TEMP_MARK}{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        kwargs = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_no_clobber(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def unfinished_target(name: str) -> str | None:
    """The file name an :func:`atomic_write` temp file called ``name`` was for (its write never
    finished: the process was killed); None for any other name."""
    if name.startswith(".") and _TEMP_MARK in name:
        return name[1 : name.rindex(_TEMP_MARK)]
    return None


def _link_no_clobber(tmp: Path, target: Path) -> None:
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise _exists(target) from None
    except OSError:  # a filesystem without hard links: check, then rename
        if target.exists():
            raise _exists(target) from None
        os.replace(tmp, target)


def _exists(target: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{target} already exists; pass --overwrite to replace it, or choose another --out"
    )


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def to_schema(frame: gpd.GeoDataFrame, extra: Sequence[str] = ()) -> gpd.GeoDataFrame:
    """Return ``frame`` as Open Buildings v3 rows: the schema columns in order, with Plus Codes.

    ``full_plus_code`` is (re)computed from ``latitude``/``longitude`` at length 12; any other
    column (such as ``instance_id``) is dropped, but for the ``extra`` ones, kept after them.

    Args:
        frame: footprints in EPSG:4326 with ``latitude, longitude, area_in_meters, confidence,
            geometry``, e.g. the output of ``polygonize``.
        extra: further columns to keep, in this order (``ob-change``'s ``change``,
            ``first_seen``, ``last_seen``).

    Returns:
        A new GeoDataFrame with columns ``SCHEMA_COLUMNS`` and a fresh RangeIndex.

    Raises:
        ValueError: if a column is missing or the CRS is not EPSG:4326.
    """
    from open_buildings.geo.cells import plus_codes

    missing = [c for c in [*SCHEMA_COLUMNS[:-1], *extra] if c not in frame.columns]
    if missing:
        raise ValueError(f"footprints lack the column(s) {missing}; expected {SCHEMA_COLUMNS[:-1]}")
    if frame.crs is not None and frame.crs.to_epsg() != 4326:
        raise ValueError(f"footprints must be in EPSG:4326 (lon/lat), got {frame.crs}; use to_crs")
    out = gpd.GeoDataFrame(
        {c: frame[c].to_numpy(dtype=float) for c in SCHEMA_COLUMNS[:4]},
        geometry=gpd.GeoSeries(frame.geometry.to_numpy(), crs="EPSG:4326"),
    )
    out["full_plus_code"] = pd.array(
        plus_codes(out["latitude"].to_numpy(), out["longitude"].to_numpy()), dtype=object
    )
    for column in extra:
        out[column] = frame[column].to_numpy()
    return out[[*SCHEMA_COLUMNS, *extra]]


def _spatial_order(frame: gpd.GeoDataFrame) -> np.ndarray:
    """Row order along S2's Hilbert curve (leaf cell of each centroid); stable for ties."""
    from open_buildings.geo.cells import cell_ids

    keys = cell_ids(frame["longitude"].to_numpy(), frame["latitude"].to_numpy())
    return np.argsort(keys, kind="stable")


def prepare(frame: gpd.GeoDataFrame, extra: Sequence[str] = ()) -> gpd.GeoDataFrame:
    """Return ``frame`` as the rows a file holds: :func:`to_schema`, ordered along the S2 curve."""
    rows = to_schema(frame, extra)
    return rows.iloc[_spatial_order(rows)].reset_index(drop=True)


def write_csv_gz(
    frame: gpd.GeoDataFrame,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    extra: Sequence[str] = (),
) -> FileRecord:
    """Write footprints as an Open Buildings v3 ``.csv.gz``, atomically and reproducibly.

    Rows go through ``to_schema`` and are sorted along the S2 curve. The gzip header holds no
    name or time, so the same rows always give the same bytes.

    Args:
        frame: footprints in EPSG:4326 (see ``to_schema``).
        path: the file to write, normally ``{token}_buildings.csv.gz``.
        overwrite: replace an existing file.
        extra: columns written after the schema's, as text (floats with 4 decimals, NaN empty;
            see ``to_schema``).

    Returns:
        The written file's record.

    Raises:
        OutputExistsError: if ``path`` exists and ``overwrite`` is False.
    """
    rows = prepare(frame, extra)
    target = Path(path)
    with atomic_write(target, overwrite=overwrite) as handle:
        with gzip_stream(handle) as gz:
            gz.write(csv_text(rows, extra, header=True))
    return _record(target, "csv.gz", rows)


def gzip_stream(handle: IO[bytes]) -> gzip.GzipFile:
    """A gzip stream into ``handle`` with no name or time in its header (reproducible bytes)."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=handle, compresslevel=_GZIP_LEVEL, mtime=0)


def csv_text(rows: gpd.GeoDataFrame, extra: Sequence[str] = (), *, header: bool) -> bytes:
    """The CSV lines of ``rows`` (already :func:`to_schema`'d and ordered) as UTF-8 bytes.

    Each row's text depends on that row alone, so the lines of consecutive chunks, the header
    written once, are the lines of the whole.
    """
    text = pd.DataFrame(
        {
            "latitude": _fixed(rows["latitude"], 8),
            "longitude": _fixed(rows["longitude"], 8),
            "area_in_meters": _fixed(rows["area_in_meters"], 4),
            "confidence": _fixed(rows["confidence"], 4),
            "geometry": _wkt(rows.geometry.to_numpy()),
            "full_plus_code": rows["full_plus_code"].astype(str).to_numpy(),
            **{c: _extra_text(rows[c]) for c in extra},
        }
    )
    buffer = io.StringIO()
    text.to_csv(buffer, index=False, header=header, lineterminator="\n")
    return buffer.getvalue().encode("utf-8")


def _extra_text(values: pd.Series) -> np.ndarray:
    """An extra column as text: numbers with 4 decimals (NaN empty), anything else as str."""
    if values.dtype.kind == "f":
        return _fixed(values, 4)
    return values.astype(str).to_numpy()


def _fixed(values: pd.Series, decimals: int) -> np.ndarray:
    """Fixed-point text; NaN becomes an empty field."""
    numbers = values.to_numpy(dtype=float)
    out = np.char.mod(f"%.{decimals}f", numbers).astype(object)
    out[np.isnan(numbers)] = ""
    return out


def _wkt(geoms: np.ndarray) -> np.ndarray:
    """WKT in the published form: ``POLYGON((x y, x y, ...))``, ``WKT_DECIMALS`` decimals."""
    text = shapely.to_wkt(geoms, rounding_precision=WKT_DECIMALS, trim=True)
    return np.array([t.replace("POLYGON ((", "POLYGON((", 1) for t in text], dtype=object)


def write_geoparquet(
    frame: gpd.GeoDataFrame,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    extra: Sequence[str] = (),
) -> FileRecord:
    """Write footprints as GeoParquet 1.1 with a ``bbox`` covering column, atomically.

    Rows go through ``to_schema`` and are sorted along the S2 curve, so each row group covers a
    compact area and readers can skip row groups by bbox.

    Args:
        frame: footprints in EPSG:4326 (see ``to_schema``).
        path: the file to write, normally ``{token}_buildings.parquet``.
        overwrite: replace an existing file.
        row_group_size: rows per Parquet row group.
        extra: columns written after the schema's (see ``to_schema``).

    Returns:
        The written file's record.

    Raises:
        OutputExistsError: if ``path`` exists and ``overwrite`` is False.
        ValueError: if ``row_group_size`` is not positive.
    """
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be positive, got {row_group_size}")
    rows = prepare(frame, extra)
    target = Path(path)
    table = arrow_table(rows)
    with atomic_write(target, overwrite=overwrite) as handle:
        pq.write_table(table, handle, row_group_size=row_group_size, compression="snappy")
    return _record(target, "parquet", rows)


def arrow_table(rows: gpd.GeoDataFrame) -> pa.Table:
    """``rows`` (already :func:`to_schema`'d and ordered) as the Arrow table the GeoParquet holds.

    geopandas writes it (GeoParquet 1.1 metadata, the ``bbox`` covering column) and it is read
    back, so the table is exactly what ``to_parquet`` would store; the CRS is then fixed.
    """
    staged = io.BytesIO()
    rows.to_parquet(staged, index=False, schema_version="1.1.0", write_covering_bbox=True)
    return with_fixed_crs(pq.read_table(io.BytesIO(staged.getvalue())))


def _record(path: Path, fmt: str, rows: gpd.GeoDataFrame) -> FileRecord:
    bbox = None if rows.empty else tuple(float(v) for v in rows.total_bounds)
    return file_record(path, fmt, len(rows), bbox)


def file_record(
    path: Path, fmt: str, rows: int, bbox: tuple[float, float, float, float] | None
) -> FileRecord:
    """Describe a written file: its rows and bbox as given, its size and sha256 as read back."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return FileRecord(path, fmt, rows, path.stat().st_size, digest.hexdigest(), bbox)


def write_manifest(
    folder: str | os.PathLike,
    records: Sequence[FileRecord],
    *,
    code_version: str,
    model: dict[str, Any] | None,
    settings: dict[str, Any] | None = None,
    domain: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``manifest.json`` describing a finished output folder; call it last.

    It lists each file (name relative to ``folder``, format, rows, bytes, sha256, bbox), the number
    of buildings (``total_rows``; each format must hold the same count), the overall bbox, the
    code version, the model's name and sha256, and the UTC time.
    Written atomically, so its presence means every listed file is complete.

    Args:
        folder: the output folder holding the files.
        records: the ``FileRecord`` of each written file.
        code_version: the version of this code that wrote them.
        model: ``{"name": ..., "sha256": ...}`` of the model used, or None; a
            ``"moe_capacity"`` (the eval capacity factor a V-MoE model ran at) is kept too.
        settings: what decided which footprints were written (e.g. the confidence threshold and
            whether they were clipped to the region), stored as given; omitted when None.
        domain: the tiles whose imagery looked unlike the model's training data, stored as
            given; omitted when None.
        overwrite: replace an existing manifest.

    Returns:
        The manifest's path.

    Raises:
        OutputExistsError: if a manifest exists and ``overwrite`` is False.
        ValueError: if a record lies outside ``folder`` or ``model`` lacks name or sha256.
    """
    root = Path(folder)
    if model is not None and not {"name", "sha256"} <= model.keys():
        raise ValueError(f"model must have 'name' and 'sha256', got keys {sorted(model)}")
    files = sorted((_manifest_entry(root, r) for r in records), key=lambda e: e["name"])
    boxes = np.array([r.bbox for r in records if r.bbox is not None], dtype=float)
    rows_by_format: dict[str, int] = {}
    for r in records:
        rows_by_format[r.format] = rows_by_format.get(r.format, 0) + r.rows
    if len(set(rows_by_format.values())) > 1:
        raise ValueError(f"the formats hold different numbers of buildings: {rows_by_format}")
    manifest = {
        "files": files,
        # Buildings, not lines: the same buildings written as CSV and as Parquet count once.
        "total_rows": next(iter(rows_by_format.values()), 0),
        "rows_by_format": rows_by_format,
        "bbox": None
        if boxes.size == 0
        else [*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()],
        "code_version": code_version,
        "model": None if model is None else _manifest_model(model),
        **({} if settings is None else {"settings": dict(settings)}),
        **({} if domain is None else {"domain": dict(domain)}),
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    target = root / MANIFEST_NAME
    with atomic_write(target, overwrite=overwrite, mode="w") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    return target


def _manifest_model(model: dict[str, Any]) -> dict[str, Any]:
    out = {"name": model["name"], "sha256": model["sha256"]}
    if model.get("moe_capacity") is not None:
        out["moe_capacity"] = float(model["moe_capacity"])
    return out


def _manifest_entry(root: Path, record: FileRecord) -> dict[str, Any]:
    try:
        name = Path(record.path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"{record.path} is not inside the output folder {root}") from None
    return {
        "name": name,
        "format": record.format,
        "rows": record.rows,
        "bytes": record.bytes,
        "sha256": record.sha256,
        "bbox": None if record.bbox is None else list(record.bbox),
    }
