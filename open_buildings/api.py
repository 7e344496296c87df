"""The Python API: ``open_buildings.detect`` and ``open_buildings.download`` for notebooks.

Each does what its command does (``ob-infer``, ``ob-download``) and returns the footprints as a
GeoDataFrame with the Open Buildings v3 columns, in EPSG:4326. The project's errors are raised
as they are (``RegionError``, ``ImageryError``, ...), never turned into exit codes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import geopandas as gpd

from open_buildings.errors import InferenceError

__all__ = ["detect", "download"]

#: A region: a GeoJSON file, a parsed GeoJSON object, or a ``(west, south, east, north)`` box.
RegionLike = str | os.PathLike | Mapping[str, Any] | Sequence[float]


@contextmanager
def _region_file(region: RegionLike | None, folder: Path) -> Iterator[str | None]:
    """The region as a GeoJSON file path (written into ``folder`` when it is not one already)."""
    if region is None or isinstance(region, str | os.PathLike):
        yield None if region is None else os.fspath(region)
        return
    path = folder / "region.geojson"
    if isinstance(region, Mapping):
        path.write_text(json.dumps(region), encoding="utf-8")
    else:
        from open_buildings.commands.evaluate_model import write_bbox_region

        write_bbox_region(tuple(float(v) for v in region), path)
    yield str(path)


def detect(
    region: RegionLike | None = None,
    imagery: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike = "default",
    min_confidence: float | str = "auto",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> gpd.GeoDataFrame:
    """Find the buildings of a region, as ``ob-infer`` with the same defaults does.

    Args:
        region: a GeoJSON file, a GeoJSON object, or a ``(west, south, east, north)`` box in
            degrees; None: the embedded sample's region.
        imagery: a GeoTIFF/COG, a folder of them or of slippy-map tiles, a STAC file; None: the
            embedded sample.
        model: ``"default"``, a model name (``ob-models``) or a ``.safetensors`` checkpoint.
        min_confidence: ``"auto"`` (the model's calibrated threshold) or a number.
        out: keep the shards and manifest in this folder; None: a temporary one, removed.
        overwrite: replace the footprints already in ``out``.

    Returns:
        The footprints, one row per building, with the v3 columns.

    Raises:
        RegionError, ImageryError, CheckpointError, ...: bad input, as ``ob-infer`` reports it.
        InferenceError: the run failed, or no tile could be processed.
    """
    from open_buildings.commands import infer
    from open_buildings.geo.shard_read import read_footprints

    with tempfile.TemporaryDirectory(prefix="ob-detect-") as tmp:
        folder = Path(out) if out is not None else Path(tmp) / "out"
        with _region_file(region, Path(tmp)) as path:
            argv = [*([path] if path else []), "--out", str(folder), "--no-progress"]
            argv += ["--min-confidence", str(min_confidence)]
            argv += [*(["--imagery", os.fspath(imagery)] if imagery else [])]
            argv += [*(["--model", os.fspath(model)] if str(model) != "default" else [])]
            argv += ["--overwrite"] if overwrite else []
            status = infer._infer(infer.infer_parser().parse_args(argv))
        if status != 0:
            raise InferenceError(
                f"ob-infer ended with status {status} (see the messages above); the tiles that "
                f"failed are listed in {folder / 'dead_letter.jsonl'}"
            )
        return read_footprints(folder)


def download(
    region: RegionLike,
    source: str | os.PathLike,
    *,
    min_confidence: float = 0.0,
    skip_bad: bool = False,
) -> gpd.GeoDataFrame:
    """Read the buildings of a region or country from a sharded dataset, as ``ob-download`` does.

    Args:
        region: a GeoJSON file, a GeoJSON object, a ``(west, south, east, north)`` box, or a
            country (ISO code or English name, e.g. ``"KEN"``) when no such file exists.
        source: an ``ob-infer`` output folder or a dataset laid out like the published Open
            Buildings v3 data: a folder, an ``https://`` URL or a ``gs://`` path.
        min_confidence: drop buildings below this confidence.
        skip_bad: leave out damaged rows and shards (with a warning) instead of raising.

    Returns:
        The footprints that intersect the region, with the v3 columns.
    """
    from open_buildings.geo.countries import country_region
    from open_buildings.geo.regions import read_region
    from open_buildings.pipelines.download import download as download_file

    with tempfile.TemporaryDirectory(prefix="ob-download-") as tmp:
        if isinstance(region, str) and not Path(region).exists() and "." not in region:
            geometry = country_region(region).geometry
        else:
            with _region_file(region, Path(tmp)) as path:
                geometry = read_region(path).geometry
        out = Path(tmp) / "buildings.parquet"
        download_file(
            geometry,
            os.fspath(source),
            out,
            fmt="parquet",
            min_confidence=min_confidence,
            skip_bad=skip_bad,
        )
        return gpd.read_parquet(out)
