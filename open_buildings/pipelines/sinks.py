"""Where finished work goes: per-tile partials, dead letters, shard files and the manifest.

A finished tile's footprints are kept as one parquet file in the run's work folder (progress and
``--resume``); a failed tile leaves a :class:`DeadLetter`. Each shard's rows are written in each
format by one call (:func:`write_shard`, atomic and repeatable), and :func:`finalize` writes the
dead-letter list and then the manifest, last, so its presence means every file it lists is whole.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd

from open_buildings.geo import footprints
from open_buildings.pipelines import faults
from open_buildings.pipelines.postprocess import canonical_order
from open_buildings.remote import is_remote, upload

DEAD_LETTER_NAME = "dead_letter.jsonl"


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


def write_partial(frame: gpd.GeoDataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a tile's footprints (possibly none) atomically, replacing an earlier attempt's file.

    Parquet keeps every float and every WKB byte, so reading it back gives exactly the rows that
    were written: a resumed run shards the same values as an uninterrupted one.

    Args:
        frame: the tile's footprints from :func:`owned_footprints`.
        path: the file, normally :func:`partial_path`.

    Returns:
        The path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with footprints.atomic_write(target, overwrite=True) as handle:
        frame.to_parquet(handle, index=False)
    faults.point("partial")
    return target


def read_partial(path: str | os.PathLike[str]) -> gpd.GeoDataFrame:
    """Read a tile's result written by :func:`write_partial` (its columns as written)."""
    return gpd.read_parquet(path).reset_index(drop=True)


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


def write_shard(
    token: str,
    frames: Iterable[gpd.GeoDataFrame],
    root: str,
    formats: Sequence[str],
) -> list[tuple[str, footprints.FileRecord]]:
    """Write one shard's footprints in each format; safe to repeat.

    The rows of all ``frames`` are put in :func:`canonical_order` and written with the
    ``geo.footprints`` writers, which produce the same bytes for the same rows and replace the
    target atomically (temp file, fsync, rename). A retried bundle, or two attempts racing,
    therefore leaves one complete file with the same bytes; never a duplicate or a torn file.
    A ``gs://`` root is written through a local temp file and one upload per file (an object
    appears whole when its upload completes).

    Args:
        token: the shard's S2 token.
        frames: the shard's footprints, in any order (from :func:`owned_footprints`).
        root: the output folder, local or a URL Beam's FileSystems can write.
        formats: ``"csv"`` and/or ``"parquet"``.

    Returns:
        ``(file name, FileRecord)`` for each file written.
    """
    parts = [f for f in frames if len(f)]
    if not parts:
        return []
    rows = canonical_order(gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs="EPSG:4326"))
    writers = {"csv": footprints.write_csv_gz, "parquet": footprints.write_geoparquet}
    records = []
    remote = is_remote(root)
    with tempfile.TemporaryDirectory(prefix="ob-shard-") if remote else nullcontext(root) as folder:
        for fmt, name in zip(formats, shard_file_names(token, formats)):
            record = writers[fmt](rows, Path(folder) / name, overwrite=True)
            if remote:
                upload(record.path, f"{root.rstrip('/')}/{name}")
            records.append((name, record))
            faults.point("shard")
    return records


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
    """Write the dead-letter list (when any tile failed), then the manifest, last.

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
