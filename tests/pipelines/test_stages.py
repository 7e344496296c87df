"""The pipeline's plain stage functions, tested without Beam."""

from __future__ import annotations

import csv
import gzip
import io

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio.features
import shapely
import torch
from conftest import LABELS, SAMPLE, sha256_of
from torch import nn

from open_buildings.errors import InferenceError
from open_buildings.geo import cells, grid, polygonize
from open_buildings.geo.regions import read_region
from open_buildings.pipelines import postprocess, runtime, sinks

# ------------------------------------------------------------------------------------- tiles


@pytest.mark.parametrize(
    ("bounds", "level"),
    [
        (None, 16),  # the sample region
        ((36.70, -1.45, 37.05, -1.15), 14),  # ~1,500 km2 around Nairobi: many chunks
        ((179.90, -16.90, 180.0, -16.70), 14),  # a region ending at the antimeridian (Fiji)
    ],
)
def test_chunked_cover_is_exactly_the_cover(bounds, level: int) -> None:
    geometry = (
        read_region(SAMPLE / "region.geojson").geometry if bounds is None else shapely.box(*bounds)
    )
    spec = grid.GridSpec(level=level)
    expected = [t.id for t in grid.cover(geometry, spec)]
    chunked = [
        tile
        for chunk in grid.tile_chunks(geometry, level)
        for tile in grid.tiles_in_chunk(geometry, chunk, spec)
    ]
    assert len(chunked) == len(set(chunked))  # each tile once
    assert set(chunked) <= set(expected)
    # Only tiles that touch the region along a line (across the antimeridian) may be skipped:
    # their cores hold none of the region's area, so they own no building inside it.
    for tile in set(expected) - set(chunked):
        assert shapely.intersection(grid.tile_from_id(tile, spec).core, geometry).area == 0
    assert len(set(expected) - set(chunked)) < 0.05 * len(expected)


# ------------------------------------------------------------------------------------- model


class _Echo(nn.Module):
    """Logits computable by hand: channel k of the output is 2 * input band k - 1."""

    class _Spec:
        divisor = 32

    input_spec = _Spec()

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return 2 * x[:, :2] - 1


def test_run_model_pads_each_tile_on_its_own_and_crops_back() -> None:
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (3, h, w), dtype=np.uint8)
        for h, w in [(100, 130), (101, 129), (70, 60)]
    ]
    model = _Echo()
    out = runtime.run_model(model, images, pad_multiple=64)
    # (100,130) and (101,129) both pad to (128,192): one batch of two; (70,60) -> (128,64) alone
    assert sorted(model.calls) == [(1, 3, 128, 64), (2, 3, 128, 192)]
    for image, logits in zip(images, out):
        assert logits.shape == (2, *image.shape[1:]) and logits.dtype == np.float32
        np.testing.assert_array_equal(logits, 2 * (image[:2].astype(np.float32) / 255) - 1)
    # a tile's logits do not depend on its batch neighbours
    alone = runtime.run_model(_Echo(), images[1:2], pad_multiple=64)
    np.testing.assert_array_equal(alone[0], out[1])


def test_run_model_with_a_real_checkpoint_is_batch_independent(tiny_checkpoint) -> None:
    from open_buildings.models.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_checkpoint)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 90, 100), dtype=np.uint8)
    b = rng.integers(0, 256, (3, 95, 97), dtype=np.uint8)
    both = runtime.run_model(model, [a, b])
    np.testing.assert_array_equal(runtime.run_model(model, [b])[0], both[1])
    bf16 = runtime.run_model(model, [a], bf16=True)[0]
    assert bf16.shape == both[0].shape and bf16.dtype == np.float32
    assert np.abs(bf16 - both[0]).max() < 0.5  # same model, lower precision


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_worker_expecting_a_gpu_without_one_fails_loudly() -> None:
    with pytest.raises(InferenceError, match="not fall back to the CPU"):
        runtime.resolve_device("cuda")
    assert runtime.resolve_device("cpu").type == "cpu"


# ---------------------------------------------------------------------------- tile ownership


def _rasterize(tile: grid.Tile, buildings: gpd.GeoDataFrame) -> np.ndarray:
    local = buildings.to_crs(tile.grid.crs)
    shapes = [(geom, i + 1) for i, geom in enumerate(local.geometry)]
    return rasterio.features.rasterize(
        shapes,
        out_shape=(tile.grid.height, tile.grid.width),
        transform=tile.grid.transform,
        fill=0,
        dtype="int32",
    )


def test_a_building_straddling_a_tile_border_comes_out_exactly_once() -> None:
    """Real OSM buildings rasterized as instances on two adjacent tiles' grids (with margins)."""
    buildings = gpd.read_file(LABELS)
    tiles = [grid.tile_from_id("182f13a9"), grid.tile_from_id("182f13ab")]
    cores = [t.core for t in tiles]
    straddling = [
        i
        for i, geom in enumerate(buildings.geometry)
        if geom.intersects(cores[0]) and geom.intersects(cores[1])
    ]
    assert len(straddling) >= 3  # the fixture has several across this border

    outputs, seen_by = [], []
    for tile in tiles:
        labels = _rasterize(tile, buildings)
        confidence = np.linspace(0.5, 1.0, len(buildings) + 1)  # label id -> a known score
        frame = postprocess.owned_footprints(tile, labels, confidence, shard_level=6)
        unfiltered = polygonize.polygonize(labels, tile.grid.transform, tile.grid.crs)
        seen_by.append(set(unfiltered["instance_id"]))
        # confidence[label] identifies which OSM building each output row is
        frame["building"] = np.rint((frame["confidence"] - 0.5) / (0.5 / len(buildings))) - 1
        outputs.append(frame)
    # the margin lets both tiles see every straddling building ...
    for i in straddling:
        assert i + 1 in seen_by[0] and i + 1 in seen_by[1]
    # ... and ownership keeps each one exactly once
    both = pd.concat(outputs, ignore_index=True)
    counts = both["building"].astype(int).value_counts()
    for i in straddling:
        assert counts.get(i, 0) == 1
    assert counts.max() == 1  # no building anywhere comes out twice
    # the owner is the tile holding the output's centroid, and its shard is the level-6 cell
    for tile, frame in zip(tiles, outputs):
        assert tile.owns(frame["longitude"].to_numpy(), frame["latitude"].to_numpy()).all()
        assert set(frame["shard"]) == {cells.token_of(cells.parse_token(tile.id).parent(6).id())}


def test_pixels_without_imagery_yield_no_buildings() -> None:
    buildings = gpd.read_file(LABELS)
    tile = grid.tile_from_id("182f13ab")
    labels = _rasterize(tile, buildings)
    everything = postprocess.owned_footprints(tile, labels, None)
    valid = np.zeros(labels.shape, dtype=bool)
    assert len(everything) > 0
    assert postprocess.owned_footprints(tile, labels, None, valid).empty


# ------------------------------------------------------------------------------------ files


@pytest.fixture(scope="module")
def footprint_frame() -> gpd.GeoDataFrame:
    buildings = gpd.read_file(LABELS)
    tile = grid.tile_from_id("182f13ab")
    labels = _rasterize(tile, buildings)
    return postprocess.owned_footprints(tile, labels, np.linspace(0.3, 0.9, len(buildings) + 1))


def test_shard_files_do_not_depend_on_row_order_and_rewriting_is_identical(
    footprint_frame, tmp_path
) -> None:
    first = tmp_path / "a"
    second = tmp_path / "b"
    first.mkdir()
    second.mkdir()
    records = sinks.write_shard("182f", [footprint_frame], str(first), ("csv", "parquet"))
    shuffled = footprint_frame.sample(frac=1.0, random_state=3)
    halves = [shuffled.iloc[: len(shuffled) // 2], shuffled.iloc[len(shuffled) // 2 :]]
    sinks.write_shard("182f", halves[::-1], str(second), ("csv", "parquet"))
    names = [name for name, _ in records]
    assert names == ["182f_buildings.csv.gz", "182f_buildings.parquet"]
    for name in names:
        assert sha256_of(first / name) == sha256_of(second / name)
    # one part is written as it is loaded: where centroids tie (same S2 leaf), its own row order
    # must not reach the file
    twins = footprint_frame.iloc[:6].assign(confidence=lambda f: f["confidence"] + 0.01)
    tied = pd.concat([footprint_frame, twins], ignore_index=True)
    for folder, frame in (("c", tied), ("d", tied.sample(frac=1.0, random_state=5))):
        (tmp_path / folder).mkdir()
        sinks.write_shard("182f", [frame], str(tmp_path / folder), ("csv", "parquet"))
    for name in names:
        assert sha256_of(tmp_path / "c" / name) == sha256_of(tmp_path / "d" / name)
    # a retried bundle rewrites the same bytes, atomically, leaving no temp files
    again = sinks.write_shard("182f", [footprint_frame], str(first), ("csv", "parquet"))
    assert [r.sha256 for _, r in again] == [r.sha256 for _, r in records]
    assert sorted(p.name for p in first.iterdir()) == names


def test_csv_reads_with_pandas_and_the_csv_module(footprint_frame, tmp_path) -> None:
    sinks.write_shard("182f", [footprint_frame], str(tmp_path), ("csv",))
    path = tmp_path / "182f_buildings.csv.gz"
    table = pd.read_csv(path)
    assert list(table.columns) == [
        "latitude",
        "longitude",
        "area_in_meters",
        "confidence",
        "geometry",
        "full_plus_code",
    ]
    assert len(table) == len(footprint_frame)
    raw = gzip.decompress(path.read_bytes()).decode("utf-8")
    rows = list(csv.reader(io.StringIO(raw)))
    assert all(len(r) == 6 for r in rows)
    assert '"POLYGON((' in raw  # the WKT holds commas, so it is quoted
    geoms = shapely.from_wkt([r[4] for r in rows[1:]])
    assert shapely.is_valid(geoms).all()


def test_geoparquet_reads_with_geopandas_and_filters_by_bbox(footprint_frame, tmp_path) -> None:
    sinks.write_shard("182f", [footprint_frame], str(tmp_path), ("parquet",))
    path = tmp_path / "182f_buildings.parquet"
    frame = gpd.read_parquet(path)
    assert len(frame) == len(footprint_frame) and frame.crs.to_epsg() == 4326
    minx, miny, maxx, maxy = frame.total_bounds
    box = (minx, miny, (minx + maxx) / 2, (miny + maxy) / 2)
    part = gpd.read_parquet(path, bbox=box)
    expected = shapely.intersects(shapely.box(*box), shapely.envelope(frame.geometry.to_numpy()))
    assert 0 < len(part) < len(frame)
    assert len(part) == int(expected.sum())


def test_partials_round_trip_exactly(footprint_frame, tmp_path) -> None:
    path = sinks.write_partial(footprint_frame, sinks.partial_path(tmp_path, "182f13ab"))
    back = sinks.read_partial(path)
    pd.testing.assert_frame_equal(
        pd.DataFrame(back.drop(columns="geometry")),
        pd.DataFrame(footprint_frame.drop(columns="geometry")),
    )
    assert (
        shapely.to_wkb(back.geometry.to_numpy())
        == shapely.to_wkb(footprint_frame.geometry.to_numpy())
    ).all()
