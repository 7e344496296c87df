"""A job's tiles kept as files until their shards are written, on a local disk and in a bucket.

The bucket is a Beam filesystem (scheme ``fakebucket://``) over a local folder, so the code goes
through ``FileSystems`` as it does with ``gs://`` on Dataflow.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from apache_beam.io.localfilesystem import LocalFileSystem
from conftest import LABELS, sha256_of

from open_buildings.geo import cells, grid
from open_buildings.pipelines import postprocess, sinks

BUCKET: dict[str, Path] = {}


class FakeBucket(LocalFileSystem):
    """``fakebucket://key`` -> ``BUCKET["root"] / key``; no folders needed before a write."""

    @classmethod
    def scheme(cls) -> str:
        return "fakebucket"

    def _local(self, path: str) -> str:
        return str(BUCKET["root"] / path.split("://", 1)[1])

    def create(self, path, *args, **kwargs):
        os.makedirs(os.path.dirname(self._local(path)), exist_ok=True)
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def delete(self, paths):
        for path in paths:  # as GCSFileSystem: a trailing "/" deletes everything under it
            if path.endswith("/"):
                shutil.rmtree(self._local(path), ignore_errors=True)
            else:
                super().delete([self._local(path)])


@pytest.fixture(scope="module")
def tiles() -> list[gpd.GeoDataFrame]:
    """The owned footprints of the two labelled Nairobi tiles: real OSM outlines as instances."""
    import rasterio.features

    osm = gpd.read_file(LABELS)
    out = []
    for tile_id in ("182f13a9", "182f13ab"):
        tile = grid.tile_from_id(tile_id)
        local = osm.to_crs(tile.grid.crs)
        labels = rasterio.features.rasterize(
            [(g, i + 1) for i, g in enumerate(local.geometry)],
            out_shape=(tile.grid.height, tile.grid.width),
            transform=tile.grid.transform,
            dtype="int32",
        )
        scores = np.linspace(0.3, 0.9, len(osm) + 1)
        out.append(postprocess.owned_footprints(tile, labels, scores))
    return out


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_parts_kept_as_files_write_the_shards_the_rows_would(
    tiles, tmp_path: Path, where: str
) -> None:
    BUCKET["root"] = tmp_path / "bucket"
    root = str(tmp_path / "out") if where == "local" else "fakebucket://out"
    (tmp_path / "out").mkdir()
    (tmp_path / "whole").mkdir()
    parts: dict[str, list[sinks.ShardPart]] = {}
    for frame, tile_id in zip(tiles, ("182f13a9", "182f13ab")):
        url = sinks.write_partial(frame, sinks.part_url(root, tile_id))
        for token, part in sinks.shard_parts(frame, url):
            assert part.rows is None and part.path == url
            parts.setdefault(token, []).append(part)
    assert [len(p) for p in parts.values()] == [2]  # one shard, a part from each tile
    for token, shard in parts.items():
        kept = sinks.write_shard(token, shard[::-1], root, ("csv", "parquet"))
        rows = [f[f[postprocess.SHARD_COLUMN] == token] for f in tiles]
        whole = sinks.write_shard(token, rows, str(tmp_path / "whole"), ("csv", "parquet"))
        assert [(n, r.sha256, r.rows) for n, r in kept] == [(n, r.sha256, r.rows) for n, r in whole]
        for name, _ in kept:
            written = tmp_path / "out" / name if where == "local" else BUCKET["root"] / "out" / name
            assert sha256_of(written) == sha256_of(tmp_path / "whole" / name)
    folder = (tmp_path / "out" if where == "local" else BUCKET["root"] / "out") / ".parts"
    assert sorted(p.name for p in folder.iterdir()) == ["182f13a9.parquet", "182f13ab.parquet"]
    sinks.remove_parts(root)
    assert not folder.exists()
    sinks.remove_parts(root)  # nothing left: nothing to do


def test_a_part_reads_back_exactly(tiles, tmp_path: Path) -> None:
    BUCKET["root"] = tmp_path
    url = sinks.write_partial(tiles[0], "fakebucket://run/.parts/182f13a9.parquet")
    back = sinks.read_partial(url)
    assert back.crs == tiles[0].crs and list(back.columns) == list(tiles[0].columns)
    assert (back.geometry.to_wkb() == tiles[0].geometry.to_wkb()).all()
    assert back.drop(columns="geometry").equals(tiles[0].drop(columns="geometry"))
    assert cells.cell_ids(back["longitude"].to_numpy(), back["latitude"].to_numpy()).size


def test_gzip_files_cross_to_a_bucket_and_back_as_they_are(tmp_path: Path) -> None:
    """Beam's FileSystems gzip a ``.gz`` name on create and unpack it on open unless told not to."""
    from open_buildings import remote

    BUCKET["root"] = tmp_path / "bucket"
    local = tmp_path / "x_buildings.csv.gz"
    local.write_bytes(gzip.compress(b"latitude,longitude\n1,2\n", mtime=0))
    remote.upload(local, "fakebucket://out/x_buildings.csv.gz")
    assert (BUCKET["root"] / "out" / "x_buildings.csv.gz").read_bytes() == local.read_bytes()
    back = remote.local_copy("fakebucket://out/x_buildings.csv.gz")
    assert Path(back).read_bytes() == local.read_bytes()
