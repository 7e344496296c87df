"""Where finished work goes: per-tile partials, dead letters, shard files and the manifest.

A finished tile's footprints are kept as one parquet file in the run's work folder (progress and
``--resume``); a failed tile leaves a :class:`DeadLetter`. Each shard's rows are written in each
format by one call (:func:`write_shard`, atomic and repeatable), and :func:`finalize` writes the
dead-letter list and then the manifest, last, so its presence means every file it lists is whole.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq
import pyproj
import shapely

from open_buildings.geo import footprint_stream, footprints
from open_buildings.pipelines import faults
from open_buildings.pipelines.postprocess import SHARD_COLUMN, canonical_order, split_by_shard
from open_buildings.remote import is_remote, read_bytes, upload

DEAD_LETTER_NAME = "dead_letter.jsonl"
#: Where a job without a work folder keeps finished tiles' footprints (:func:`part_url`).
PARTS_FOLDER = ".parts"


@dataclass(frozen=True)
class DeadLetter:
    """A tile that could not be processed, and why.

    Attributes:
        tile_id: the tile's S2 token.
        stage: the stage that failed (``"read"``, ``"postprocess"``).
        reason: the error message.
    """

    tile_id: str
    stage: str
    reason: str

    def to_json(self) -> str:
        """Return the record as one JSON line (no newline)."""
        return json.dumps(
            {"tile_id": self.tile_id, "stage": self.stage, "reason": self.reason}, sort_keys=True
        )


def partial_path(work_dir: str | os.PathLike[str], tile_id: str) -> Path:
    """Return where a finished tile's footprints are kept (for progress and ``--resume``)."""
    return Path(work_dir) / "tiles" / f"{tile_id}.parquet"


def failed_path(work_dir: str | os.PathLike[str], tile_id: str) -> Path:
    """Return where a failed tile's dead-letter record is kept during a local run."""
    return Path(work_dir) / "failed" / f"{tile_id}.json"


def put(url: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> str:
    """Write a file at ``url`` atomically, replacing any earlier one: locally a temp file and a
    rename (its folder made first), at a URL one upload (an object appears whole).

    Args:
        url: a local path or a URL Beam's FileSystems can write.
        write: writes the file's bytes to the handle it is given.

    Returns:
        ``url`` as a string.
    """
    url = str(url)
    if not is_remote(url):
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        with footprints.atomic_write(url, overwrite=True) as handle:
            write(handle)
        return url
    with tempfile.TemporaryDirectory(prefix="ob-put-") as folder:
        local = Path(folder) / url.rsplit("/", 1)[-1]
        with open(local, "wb") as handle:
            write(handle)
        upload(local, url)
    return url


def write_partial(frame: gpd.GeoDataFrame, path: str | os.PathLike[str]) -> str:
    """Write a tile's footprints (possibly none) atomically, replacing an earlier attempt's file.

    Parquet keeps every float and every WKB byte, so reading it back gives exactly the rows that
    were written: a resumed run shards the same values as an uninterrupted one.

    Args:
        frame: the tile's footprints from :func:`owned_footprints`.
        path: the file, normally :func:`partial_path` (or :func:`part_url`, which may be a URL).

    Returns:
        The path, as a string.
    """
    path = put(path, lambda handle: frame.to_parquet(handle, index=False))
    faults.point("partial")
    return path


def part_url(root: str, tile_id: str) -> str:
    """Where a job without a work folder keeps a finished tile's footprints until its shards are
    written (under the output folder; :func:`finalize` removes them)."""
    return f"{root.rstrip('/')}/{PARTS_FOLDER}/{tile_id}.parquet"


def remove_parts(root: str) -> None:
    """Remove the footprints :func:`part_url` files kept under ``root``, if any."""
    folder = f"{root.rstrip('/')}/{PARTS_FOLDER}"
    if not is_remote(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    try:  # a trailing "/" deletes recursively (GCS has no folders to test for first)
        FileSystems.delete([folder + "/"])
    except BeamIOError as exc:  # the shards and the manifest are complete: say, don't fail
        logging.getLogger(__name__).warning("could not remove %s (%s); delete it", folder, exc)


def read_partial(path: str | os.PathLike[str]) -> gpd.GeoDataFrame:
    """Read a tile's result written by :func:`write_partial` (its columns as written); ``path``
    may be a URL.

    ``gpd.read_parquet`` would parse the file's PROJJSON CRS with pyproj on every call (14 ms, the
    most of a small tile's read, and a shard's writer reads every one of its tiles' partials),
    so the CRS is parsed once per distinct text here and the geometries decoded with shapely.
    """
    table = pq.read_table(io.BytesIO(read_bytes(path)))
    geo = json.loads(table.schema.metadata[b"geo"])
    name = geo["primary_column"]
    crs = geo["columns"][name].get("crs", "OGC:CRS84")  # GeoParquet: absent means lon/lat
    columns = {
        field: (
            shapely.from_wkb(table.column(field).to_numpy(zero_copy_only=False))
            if field == name
            else table.column(field).to_pandas()
        )
        for field in table.column_names
    }
    return gpd.GeoDataFrame(
        columns, geometry=name, crs=None if crs is None else _crs(json.dumps(crs))
    )


@functools.lru_cache(maxsize=8)
def _crs(projjson: str) -> pyproj.CRS:
    return pyproj.CRS.from_user_input(json.loads(projjson))


def read_back(path: str | os.PathLike[str]) -> list[gpd.GeoDataFrame]:
    """A kept tile's result as a resumed run passes it on: its rows, read back."""
    return [read_partial(path)]


def partial_parts(path: str | os.PathLike[str]) -> list[tuple[str, ShardPart]]:
    """A kept tile's result as a resumed inference run passes it on: ``(shard token, part)``
    naming the partial, as a finished tile's are (:func:`shard_parts`)."""
    return list(shard_parts(read_partial(path), path))


def domain_path(work_dir: str | os.PathLike[str], tile_id: str) -> Path:
    """Return where a tile's unfamiliar-imagery warning is kept during a local run."""
    return Path(work_dir) / "domain" / f"{tile_id}.json"


def write_domain_marker(tile_id: str, reasons: list[str], work_dir: str | os.PathLike[str]) -> Path:
    """Keep a tile's unfamiliar-imagery warning, so that a resumed run still reports it."""
    target = domain_path(work_dir, tile_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    with footprints.atomic_write(target, overwrite=True, mode="w") as handle:
        json.dump({"tile_id": tile_id, "reasons": reasons}, handle)
    return target


def read_domain_marker(path: str | os.PathLike[str]) -> tuple[str, list[str]]:
    """Read a warning written by :func:`write_domain_marker` as ``(tile id, reasons)``."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    return str(record["tile_id"]), [str(r) for r in record["reasons"]]


def stats_path(work_dir: str | os.PathLike[str], tile_id: str) -> Path:
    """Return where a tile's figures for the run summary are kept during a local run."""
    return Path(work_dir) / "stats" / f"{tile_id}.json"


def write_tile_stats(work_dir: str | os.PathLike[str], tile_id: str, **figures: int) -> Path:
    """Keep a finished tile's summary figures, so that a resumed run reports the whole job.

    Args:
        work_dir: the run's work folder.
        tile_id: the tile.
        figures: e.g. ``m2_covered``, ``tiles_empty``, ``outside_region``; they replace what an
            earlier attempt at the same tile wrote.
    """
    target = stats_path(work_dir, tile_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    with footprints.atomic_write(target, overwrite=True, mode="w") as handle:
        json.dump(figures, handle, sort_keys=True)
    return target


def job_stats(work_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Sum the figures of every finished tile of the job, this run's and earlier runs' alike.

    Only tiles with a partial (:func:`partial_path`) count: a tile read but never finished was
    not part of the output.
    """
    totals: dict[str, int] = {}
    for path in sorted((Path(work_dir) / "stats").glob("*.json")):
        if not partial_path(work_dir, path.stem).exists():
            continue
        for key, value in json.loads(path.read_text(encoding="utf-8")).items():
            totals[key] = totals.get(key, 0) + int(value)
    return totals


def write_dead_letter_marker(record: DeadLetter, work_dir: str | os.PathLike[str]) -> Path:
    """Record a failed tile in the work folder (local runs count these for progress)."""
    target = failed_path(work_dir, record.tile_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    with footprints.atomic_write(target, overwrite=True, mode="w") as handle:
        handle.write(record.to_json() + "\n")
    return target


def shard_file_names(token: str, formats: Iterable[str]) -> list[str]:
    """Return the file names of one shard: ``{token}_buildings.csv.gz`` / ``.parquet``."""
    suffix = {"csv": footprints.CSV_SUFFIX, "parquet": footprints.PARQUET_SUFFIX}
    return [f"{token}_buildings{suffix[f]}" for f in formats]


@dataclass(frozen=True)
class ShardPart:
    """One tile's footprints in one shard, as the shard's GroupByKey carries them.

    With a work folder only the path of the tile's partial travels (the rows stay on disk until
    the shard is written, so a shard's group holds a few hundred bytes per tile); without one,
    the rows themselves.

    Attributes:
        token: the shard's S2 token.
        summary: what the shard's writer needs before it opens the files
            (``footprint_stream.summarise`` of the rows, taken when they were made).
        path: the tile's partial (:func:`write_partial`), holding this shard's rows among others.
        rows: the rows, when there is no partial.
    """

    token: str
    summary: footprint_stream.PartSummary
    path: str | None = None
    rows: gpd.GeoDataFrame | None = None

    def load(self) -> gpd.GeoDataFrame:
        """Return the part's footprints in :func:`canonical_order` (read from the partial when
        kept there)."""
        if self.rows is not None:
            return canonical_order(self.rows)
        frame = read_partial(self.path)
        return canonical_order(frame[frame[SHARD_COLUMN] == self.token])


def shard_parts(
    frame: gpd.GeoDataFrame, path: str | os.PathLike[str] | None = None
) -> Iterator[tuple[str, ShardPart]]:
    """Yield ``(shard token, part)`` for each shard a tile's footprints fall in.

    Args:
        frame: the tile's footprints from :func:`owned_footprints`.
        path: the tile's partial, already written; None carries the rows instead.
    """
    for token, rows in split_by_shard(frame):
        summary = footprint_stream.summarise(rows)
        if path:
            yield token, ShardPart(token, summary, path=str(path))
        else:
            yield token, ShardPart(token, summary, rows=rows)


def write_shard(
    token: str,
    parts: Iterable[ShardPart | gpd.GeoDataFrame],
    root: str,
    formats: Sequence[str],
) -> list[tuple[str, footprints.FileRecord]]:
    """Write one shard's footprints in each format; safe to repeat.

    The parts are written one tile at a time (``geo.footprint_stream``), so memory does not grow
    with the shard. The files hold the rows of all ``parts`` in the order ``geo.footprints``'
    writers give them, ties in :func:`canonical_order`: the same bytes whatever order the parts
    arrive in. Each file replaces its target atomically (temp file, fsync, rename), so a retried
    bundle, or two attempts racing, leaves one complete file with the same bytes; never a
    duplicate or a torn file. A ``gs://`` root is written through a local temp file and one
    upload per file (an object appears whole when its upload completes).

    Args:
        token: the shard's S2 token.
        parts: the shard's footprints (parts from :func:`shard_parts`, or frames), in any order.
        root: the output folder, local or a URL Beam's FileSystems can write.
        formats: ``"csv"`` and/or ``"parquet"``.

    Returns:
        ``(file name, FileRecord)`` for each file written.
    """
    summarised = [s for s in map(_summarised, parts) if s is not None]
    names = dict(zip(formats, shard_file_names(token, formats)))
    remote = is_remote(root)
    records = []

    def written(record: footprints.FileRecord) -> None:
        if remote:
            upload(record.path, f"{root.rstrip('/')}/{record.path.name}")
        records.append((record.path.name, record))
        faults.point("shard")

    with tempfile.TemporaryDirectory(prefix="ob-shard-") if remote else nullcontext(root) as folder:
        targets = {_FORMAT[f]: Path(folder) / name for f, name in names.items()}
        try:
            footprint_stream.write_parts(summarised, targets, overwrite=True, on_written=written)
        except footprint_stream.InterleavedPartsError:  # parts not cut by tile: write them whole
            frames = [load() for _, load in summarised]
            rows = canonical_order(gpd.GeoDataFrame(pd.concat(frames), crs="EPSG:4326"))
            writers = {"csv.gz": footprints.write_csv_gz, "parquet": footprints.write_geoparquet}
            for fmt, target in targets.items():
                written(writers[fmt](rows, target, overwrite=True))
    return records


_FORMAT = {"csv": "csv.gz", "parquet": "parquet"}


def _summarised(
    part: ShardPart | gpd.GeoDataFrame,
) -> tuple[footprint_stream.PartSummary, Callable[[], gpd.GeoDataFrame]] | None:
    """``(summary, loader)`` for ``footprint_stream.write_parts``; None for a frame of no rows."""
    if isinstance(part, ShardPart):
        return part.summary, part.load
    if not len(part):
        return None
    return footprint_stream.summarise(part), lambda: canonical_order(part)


def finalize(
    root: str,
    records: Iterable[tuple[str, footprints.FileRecord]],
    dead_letters: Iterable[DeadLetter],
    *,
    code_version: str,
    model: dict[str, Any] | None,
    settings: dict[str, Any] | None = None,
    domain: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the dead-letter list (when any tile failed), then the manifest, last; then remove the
    tiles' footprints kept for the shards (:func:`part_url`).

    Args:
        root: the output folder.
        records: every shard file written, as ``(name, FileRecord)``.
        dead_letters: the tiles that failed.
        code_version: this package's version.
        model: ``{"name", "sha256"}`` of the model used.
        settings: what decided which footprints were written, recorded as they are.
        domain: the tiles whose imagery looked unlike the model's training imagery.

    Returns:
        A summary: ``files``, ``rows``, ``dead_letters`` counts and the manifest's location.
    """
    remote = is_remote(root)
    records = sorted(records, key=lambda r: r[0])
    failed = sorted(dead_letters, key=lambda d: (d.tile_id, d.stage))
    formats = {r.format for _, r in records}
    with tempfile.TemporaryDirectory(prefix="ob-final-") if remote else nullcontext(root) as folder:
        base = Path(folder)
        if failed:
            with footprints.atomic_write(base / DEAD_LETTER_NAME, overwrite=True, mode="w") as f:
                f.writelines(d.to_json() + "\n" for d in failed)
            if remote:
                upload(base / DEAD_LETTER_NAME, f"{root.rstrip('/')}/{DEAD_LETTER_NAME}")
        rebased = [replace(record, path=base / name) for name, record in records]
        faults.point("manifest")
        manifest = footprints.write_manifest(
            base,
            rebased,
            code_version=code_version,
            model=model,
            settings=settings,
            domain=domain,
            overwrite=True,
        )
        if remote:
            upload(manifest, f"{root.rstrip('/')}/{footprints.MANIFEST_NAME}")
    remove_parts(root)  # every shard is written
    return {
        "files": len(records),
        "rows": max(
            (sum(r.rows for _, r in records if r.format == fmt) for fmt in formats), default=0
        ),
        "dead_letters": len(failed),
        "manifest": f"{root.rstrip('/')}/{footprints.MANIFEST_NAME}",
    }


def load_dead_letters(path: str | os.PathLike[str]) -> list[DeadLetter]:
    """Read a ``dead_letter.jsonl`` (or a folder of per-tile markers) back into records."""
    source = Path(path)
    lines: list[str] = []
    if source.is_dir():
        for file in sorted(source.glob("*.json")):
            lines.extend(file.read_text(encoding="utf-8").splitlines())
    elif source.exists():
        lines = source.read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        if line.strip():
            d = json.loads(line)
            out.append(DeadLetter(d["tile_id"], d["stage"], d["reason"]))
    return out
