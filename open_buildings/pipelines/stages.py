"""The inference pipeline's stages as plain functions: no Beam here, each tested on its own.

The Beam transforms in :mod:`open_buildings.pipelines.transforms` are thin adapters over these.
A tile travels: :func:`tile_chunks` / :func:`tiles_in_chunk` (which tiles) -> :func:`read_tile`
(pixels) -> :func:`run_model` (logits) -> :func:`footprints_for_tile` (polygons the tile owns, with
their shard) -> :func:`write_shard` (files) -> :func:`finalize` (dead letters, then the manifest).

Determinism is a design rule here, because a retried bundle and a resumed run must produce the
same bytes: the model sees each tile padded to a size that depends only on the tile (never on its
batch neighbours), and rows are put in a total order before they are written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from open_buildings.errors import InferenceError
from open_buildings.geo import cells, footprints, grid, polygonize
from open_buildings.geo.imagery import ImagerySource, TileImage

#: Tiles are enumerated in chunks: the S2 cells this many levels above the tile level.
CHUNK_LEVELS = 5
#: Each tile is padded (bottom/right) to a multiple of this before the model sees it.
PAD_MULTIPLE = 64
SHARD_COLUMN = "shard"
DEAD_LETTER_NAME = "dead_letter.jsonl"
#: Sort keys that put footprints in a total order before they are written.
_ORDER = ["latitude", "longitude", "area_in_meters", "confidence"]
_FRAME_COLUMNS = [*footprints.SCHEMA_COLUMNS[:5], SHARD_COLUMN]


@dataclass(frozen=True)
class TileInput:
    """A tile's pixels as the model handler receives them.

    Attributes:
        rgb: uint8 array (3, H, W).
        valid: bool array (H, W); False where the imagery has no data.
    """

    rgb: np.ndarray
    valid: np.ndarray


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


def chunk_level(tile_level: int) -> int:
    """Return the S2 level of the chunks tiles are enumerated in (at least 1)."""
    return max(1, tile_level - CHUNK_LEVELS)


def tile_chunks(geometry: shapely.Geometry, tile_level: int) -> Iterator[str]:
    """Yield the tokens of the coarse S2 cells (chunks) that touch ``geometry``.

    Each chunk holds up to ``4 ** CHUNK_LEVELS`` tiles; workers expand chunks in parallel, so a
    continent's tiles are never listed in one place.

    Args:
        geometry: the region in lon/lat.
        tile_level: the S2 level of the tiles.
    """
    for chunk in grid.cover(geometry, grid.GridSpec(level=chunk_level(tile_level))):
        yield chunk.id


def tiles_in_chunk(geometry: shapely.Geometry, chunk: str, spec: grid.GridSpec) -> Iterator[str]:
    """Yield the ids of the tiles of one chunk whose core touches ``geometry``.

    The region is clipped to the chunk's outline grown by a tenth of its size (so that the outline's
    polyline approximation of geodesic edges can lose nothing), covered at the tile level, and the
    tiles that are not descendants of the chunk are dropped. Over all chunks this yields
    ``grid.cover(geometry, spec)``, each tile once, except tiles that touch the region only along a
    line at the antimeridian (no area of the region lies in their cores, so they own nothing).

    Args:
        geometry: the region in lon/lat.
        chunk: a token from :func:`tile_chunks`.
        spec: the tiling grid.
    """
    outline = cells.cell_polygon(chunk, points_per_edge=32)
    minx, miny, maxx, maxy = outline.bounds
    grown = shapely.buffer(outline, 0.1 * max(maxx - minx, maxy - miny), join_style="mitre")
    grown = shapely.intersection(grown, shapely.box(-180.0, -90.0, 180.0, 90.0))
    part = shapely.intersection(geometry, grown)
    polygons = [p for p in shapely.get_parts(part) if isinstance(p, shapely.Polygon) and p.area > 0]
    if not polygons:
        return
    piece = polygons[0] if len(polygons) == 1 else shapely.MultiPolygon(polygons)
    parent = cells.parse_token(chunk)
    for tile in grid.cover(piece, spec):
        if parent.contains(cells.parse_token(tile.id)):
            yield tile.id


def read_tile(source: ImagerySource, tile: grid.Tile) -> TileImage:
    """Read one tile's pixels (core plus margin) on its 50 cm grid.

    Args:
        source: the imagery.
        tile: the tile.

    Returns:
        The pixels; ``.empty`` when no imagery covers the tile.

    Raises:
        ImageryError: if the imagery cannot be read.
    """
    return source.read(tile.grid)


def covered_m2(tile: grid.Tile, image: TileImage) -> int:
    """Return the ground area of the tile's core that has imagery, in whole square metres.

    Args:
        tile: the tile.
        image: its pixels.
    """
    if image.empty:
        return 0
    core_m2 = float(gpd.GeoSeries([tile.core], crs="EPSG:4326").to_crs(tile.crs).area.iloc[0])
    return round(core_m2 * float(image.valid.mean()))


def padded_shape(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Return ``(height, width)`` rounded up to multiples of ``multiple``."""
    return (math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)


def resolve_device(device: str) -> Any:
    """Return the torch device to run on, failing loudly when a GPU was expected but is missing.

    Args:
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        The ``torch.device``.

    Raises:
        InferenceError: if ``device`` is ``"cuda"`` and torch sees no GPU, or is unknown.
    """
    import torch

    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise InferenceError(
                "this worker was asked to run the model on a GPU (device 'cuda'), but torch sees "
                f"none (torch {torch.__version__}, built for CUDA {torch.version.cuda}). It will "
                "not fall back to the CPU silently. Check the worker's accelerator and driver "
                "(Dataflow: gpu_type/gpu_count and the CUDA image from deploy/), or run with "
                "--device cpu"
            )
        return torch.device("cuda")
    raise InferenceError(f"unknown device {device!r}; use 'cpu' or 'cuda'")


def run_model(
    model: Any,
    images: Sequence[np.ndarray],
    *,
    device: Any = "cpu",
    bf16: bool = False,
    pad_multiple: int = PAD_MULTIPLE,
) -> list[np.ndarray]:
    """Run the model on tiles of possibly different sizes; return each tile's logits.

    Each tile is padded at its bottom and right (reflecting its own pixels) to a size that depends
    only on the tile: its height and width rounded up to ``pad_multiple`` (and to the model's size
    divisor). Tiles whose padded sizes agree run as one batch; the logits are cropped back to the
    tile. So a tile's result never depends on which tiles it was batched with, and a retried or
    resumed tile gives the same footprints.

    Args:
        model: a ``BuildingModel`` (``forward`` takes floats in [0, 1], returns logits).
        images: uint8 arrays of shape (3, H, W).
        device: where the model is (``torch.device`` or ``"cpu"``/``"cuda"``).
        bf16: run under bfloat16 autocast.
        pad_multiple: the padding granularity in pixels.

    Returns:
        float32 arrays of shape (C, H, W), one per image, in input order.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    device = torch.device(device)
    divisor = int(getattr(getattr(model, "input_spec", None), "divisor", 1))
    multiple = math.lcm(int(pad_multiple), max(1, divisor))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        if image.ndim != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (bands, H, W), got {image.dtype} {image.shape}")
        groups.setdefault(padded_shape(*image.shape[1:], multiple), []).append(i)
    out: list[np.ndarray | None] = [None] * len(images)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for (height, width), members in sorted(groups.items()):
        batch = []
        for i in members:
            x = torch.from_numpy(np.ascontiguousarray(images[i])).float().div_(255.0)[None]
            pad_h, pad_w = height - x.shape[2], width - x.shape[3]
            if pad_h or pad_w:
                small = pad_h >= x.shape[2] or pad_w >= x.shape[3]
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate" if small else "reflect")
            batch.append(x)
        with torch.inference_mode(), autocast:
            logits = model(torch.cat(batch).to(device))
        logits = logits.float().cpu().numpy()
        for k, i in enumerate(members):
            h, w = images[i].shape[1:]
            out[i] = np.ascontiguousarray(logits[k, :, :h, :w], dtype=np.float32)
    return out  # type: ignore[return-value]


def footprints_for_tile(
    tile: grid.Tile,
    logits: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    min_confidence: float = 0.0,
    shard_level: int = 6,
    simplify_m: float = polygonize.DEFAULT_SIMPLIFY_M,
    min_area_m2: float = polygonize.DEFAULT_MIN_AREA_M2,
) -> gpd.GeoDataFrame:
    """Turn one tile's logits into the footprints this tile owns.

    Decode the channels into instances (``models.heads.decode``), drop pixels without imagery,
    polygonize, keep the buildings whose centroid lies in the tile's core (so a building the
    margin lets two tiles see is written by exactly one), drop those below ``min_confidence``, and
    add the shard key.

    Args:
        tile: the tile.
        logits: the model's output (C, H, W) on ``tile.grid``.
        valid: bool (H, W), False where there is no imagery; None means all valid.
        min_confidence: drop buildings whose confidence is below this.
        shard_level: S2 level of the shard key.
        simplify_m: polygon simplification tolerance in metres.
        min_area_m2: drop smaller buildings.

    Returns:
        See :func:`owned_footprints`.
    """
    from open_buildings.models import heads

    labels, confidence = heads.decode(logits, from_logits=True)
    return owned_footprints(
        tile,
        labels,
        confidence,
        valid,
        min_confidence=min_confidence,
        shard_level=shard_level,
        simplify_m=simplify_m,
        min_area_m2=min_area_m2,
    )


def owned_footprints(
    tile: grid.Tile,
    labels: np.ndarray,
    confidence: np.ndarray | None,
    valid: np.ndarray | None = None,
    *,
    min_confidence: float = 0.0,
    shard_level: int = 6,
    simplify_m: float = polygonize.DEFAULT_SIMPLIFY_M,
    min_area_m2: float = polygonize.DEFAULT_MIN_AREA_M2,
) -> gpd.GeoDataFrame:
    """Polygonize an instance raster on a tile's grid and keep what the tile owns.

    Args:
        tile: the tile whose grid ``labels`` lies on.
        labels: int (H, W) instance ids, 0 = background.
        confidence: per-instance scores indexed by label id, or None (NaN confidence).
        valid: bool (H, W), False where there is no imagery; None means all valid.
        min_confidence: drop buildings whose confidence is below this (NaN is never dropped).
        shard_level: S2 level of the shard key.
        simplify_m: polygon simplification tolerance in metres.
        min_area_m2: drop smaller buildings.

    Returns:
        A GeoDataFrame in EPSG:4326 with columns ``latitude, longitude, area_in_meters,
        confidence, geometry, shard``, in a canonical order (see :func:`canonical_order`).
    """
    labels = np.asarray(labels)
    if labels.shape != (tile.grid.height, tile.grid.width):
        raise ValueError(
            f"labels of shape {labels.shape} do not fit tile {tile.id}'s grid "
            f"({tile.grid.height}, {tile.grid.width})"
        )
    if valid is not None:
        labels = np.where(valid, labels, 0)
    frame = polygonize.polygonize(
        labels,
        tile.grid.transform,
        tile.grid.crs,
        confidence=confidence,
        simplify_m=simplify_m,
        min_area_m2=min_area_m2,
    )
    lon, lat = frame["longitude"].to_numpy(), frame["latitude"].to_numpy()
    keep = tile.owns(lon, lat)
    if min_confidence > 0:
        keep &= ~(frame["confidence"].to_numpy() < min_confidence)
    frame = frame[keep]
    return _with_shards(frame, shard_level)


def _with_shards(frame: gpd.GeoDataFrame, shard_level: int) -> gpd.GeoDataFrame:
    out = gpd.GeoDataFrame(
        {c: frame[c].to_numpy(dtype=float) for c in _ORDER},
        geometry=gpd.GeoSeries(frame.geometry.to_numpy(), crs="EPSG:4326"),
    )
    tokens = cells.cell_tokens(out["longitude"].to_numpy(), out["latitude"].to_numpy(), shard_level)
    out[SHARD_COLUMN] = pd.array(tokens.astype(str), dtype=object)
    return canonical_order(out[_FRAME_COLUMNS])


def empty_footprints() -> gpd.GeoDataFrame:
    """Return a footprint frame with no rows and the columns :func:`owned_footprints` gives."""
    return _with_shards(
        gpd.GeoDataFrame(
            {c: np.empty(0) for c in _ORDER}, geometry=gpd.GeoSeries([], crs="EPSG:4326")
        ),
        0,
    )


def canonical_order(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Put footprints in a total order that depends only on their values.

    Sorting by centroid, area and confidence, then by the geometry's WKB, makes the order the same
    whatever order tiles arrived in (GroupByKey gives no order), so the written files are too.

    Args:
        frame: footprints with the ``latitude, longitude, area_in_meters, confidence`` columns.

    Returns:
        The rows, reordered, with a fresh RangeIndex.
    """
    if len(frame) < 2:
        return frame.reset_index(drop=True)
    keys = [frame[c].to_numpy() for c in reversed(_ORDER)]
    wkb = shapely.to_wkb(frame.geometry.to_numpy(), hex=True)
    order = np.lexsort([wkb, *keys])
    return frame.iloc[order].reset_index(drop=True)


def split_by_shard(frame: gpd.GeoDataFrame) -> Iterator[tuple[str, gpd.GeoDataFrame]]:
    """Yield ``(shard token, rows)`` for each shard present in ``frame``, in token order.

    Args:
        frame: footprints from :func:`owned_footprints`.
    """
    if frame.empty:
        return
    for token, rows in frame.groupby(SHARD_COLUMN, sort=True):
        yield str(token), rows.reset_index(drop=True)


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
    return target


def read_partial(path: str | os.PathLike[str]) -> gpd.GeoDataFrame:
    """Read a tile's footprints written by :func:`write_partial`."""
    frame = gpd.read_parquet(path)
    return frame[_FRAME_COLUMNS].reset_index(drop=True)


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


def is_remote(root: str) -> bool:
    """Return True for an output root that is a URL (``gs://...``) rather than a local folder."""
    return "://" in str(root)


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
    return records


def upload(local: str | os.PathLike[str], url: str) -> None:
    """Copy a local file to a URL through Beam's FileSystems (e.g. ``gs://``)."""
    from apache_beam.io.filesystems import FileSystems

    with open(local, "rb") as source, FileSystems.create(url) as target:
        shutil.copyfileobj(source, target, 1 << 22)


def finalize(
    root: str,
    records: Iterable[tuple[str, footprints.FileRecord]],
    dead_letters: Iterable[DeadLetter],
    *,
    code_version: str,
    model: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write the dead-letter list (when any tile failed), then the manifest, last.

    Args:
        root: the output folder.
        records: every shard file written, as ``(name, FileRecord)``.
        dead_letters: the tiles that failed.
        code_version: this package's version.
        model: ``{"name", "sha256"}`` of the model used.

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
        manifest = footprints.write_manifest(
            base, rebased, code_version=code_version, model=model, overwrite=True
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


__all__ = [
    "DeadLetter",
    "TileInput",
    "canonical_order",
    "covered_m2",
    "finalize",
    "footprints_for_tile",
    "owned_footprints",
    "read_tile",
    "run_model",
    "split_by_shard",
    "tile_chunks",
    "tiles_in_chunk",
    "write_partial",
    "write_shard",
]
