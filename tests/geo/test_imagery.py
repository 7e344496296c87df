"""Tests for open_buildings.geo.imagery, all on real imagery in tests/data/imagery."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import from_bounds

from open_buildings.errors import ImageryError
from open_buildings.geo.grid import PixelGrid
from open_buildings.geo.imagery import (
    RasterSource,
    ReadLimits,
    StacSource,
    TileImage,
    XYZSource,
    gdal_path,
    open_imagery,
)
from open_buildings.geo.imagery_xyz import tile_bounds_3857

DATA = Path(__file__).resolve().parents[1] / "data" / "imagery"
BANEPA = DATA / "banepa"
BANEPA_A = BANEPA / "OAM-386690-220241-19.tif"  # north of B
BANEPA_B = BANEPA / "OAM-386690-220242-19.tif"
NAIROBI = DATA / "nairobi"
VEGAS = DATA / "spacenet2_vegas_400px_uint16.tif"
COGEO = DATA / "rasterio_cogeo_0.6m_no_buildings.tif"
BAD = DATA / "bad_inputs"


def utm_grid(lon: float, lat: float, n: int = 256, res: float = 0.5) -> PixelGrid:
    """A north-up grid of n x n pixels of `res` m in the UTM zone of (lon, lat), centred there."""
    epsg = (32600 if lat >= 0 else 32700) + int((lon + 180) // 6) + 1
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    half = n * res / 2
    return PixelGrid(f"EPSG:{epsg}", Affine(res, 0, x - half, 0, -res, y + half), n, n)


def centre(path: Path) -> tuple[float, float]:
    with rasterio.open(path) as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    return (w + e) / 2, (s + n) / 2


def source_mean(path: Path, grid: PixelGrid) -> np.ndarray:
    """Mean of a georeferenced uint8 file's own pixels over the grid's area."""
    with rasterio.open(path) as ds:
        bounds = transform_bounds(grid.crs, ds.crs, *grid.bounds)
        window = from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
        data = ds.read([1, 2, 3], window=window)
    return data.reshape(3, -1).mean(axis=1)


# --- RasterSource: pixels, averaging, masks, mosaics -------------------------------------------


def test_raster_tile_matches_source_pixels() -> None:
    grid = utm_grid(*centre(BANEPA_A), n=96)
    tile = open_imagery(BANEPA_A).read(grid)
    assert isinstance(tile, TileImage)
    assert tile.rgb.shape == (3, 96, 96) and tile.rgb.dtype == np.uint8
    assert tile.valid.shape == (96, 96) and tile.valid.dtype == bool
    assert tile.valid.all() and not tile.empty
    assert tile.grid == grid
    np.testing.assert_allclose(
        tile.rgb.reshape(3, -1).mean(axis=1), source_mean(BANEPA_A, grid), atol=3
    )


def test_downsampling_averages_exactly_on_aligned_grid() -> None:
    # A grid in the COG's own CRS with pixels exactly 2 x 2 source pixels: average = block mean.
    with rasterio.open(COGEO) as ds:
        t = ds.transform
        src = ds.read(window=rasterio.windows.Window(256, 256, 256, 256)).astype(float)
    grid = PixelGrid(
        "EPSG:3857", Affine(2 * t.a, 0, t.c + 256 * t.a, 0, 2 * t.e, t.f + 256 * t.e), 128, 128
    )
    tile = open_imagery(COGEO).read(grid)
    block_mean = src.reshape(3, 128, 2, 128, 2).mean(axis=(2, 4))
    assert np.abs(tile.rgb - block_mean).max() <= 1.0
    # ...and is not nearest-neighbour: on this textured area the two differ clearly.
    nearest = src[:, ::2, ::2]
    assert np.abs(tile.rgb - nearest).mean() > 3 * np.abs(tile.rgb - block_mean).mean()


def test_downsampling_averages_not_nearest_across_crs() -> None:
    grid = utm_grid(*centre(BANEPA_A), n=96)
    tile = open_imagery(BANEPA_A).read(grid).rgb.astype(float)
    with rasterio.open(BANEPA_A) as ds:
        kw = dict(crs=grid.crs, transform=grid.transform, width=96, height=96)
        with WarpedVRT(ds, resampling=Resampling.nearest, **kw) as vrt:
            nearest = vrt.read().astype(float)
    # Averaging ~3.7 x 3.7 source pixels smooths: less pixel-to-pixel variation than nearest.
    assert np.abs(np.diff(tile, axis=2)).mean() < 0.8 * np.abs(np.diff(nearest, axis=2)).mean()
    assert np.abs(tile - nearest).mean() > 3


def test_partial_overlap_masks_exactly_outside_the_footprint() -> None:
    with rasterio.open(COGEO) as ds:
        left, bottom, right, top = ds.bounds
    lon, lat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(
        left, (bottom + top) / 2
    )
    grid = utm_grid(lon, lat, n=128)
    tile = open_imagery(COGEO).read(grid)
    rows, cols = np.mgrid[0:128, 0:128]
    xs, ys = grid.transform @ (cols + 0.5, rows + 0.5)
    x3857, _ = Transformer.from_crs(grid.crs, "EPSG:3857", always_xy=True).transform(xs, ys)
    inside = x3857 > left + 1.0  # more than a metre inside the west edge
    outside = x3857 < left - 1.0
    assert inside.any() and outside.any()
    assert tile.valid[inside].all()
    assert not tile.valid[outside].any()
    assert tile.valid[64, 127] and not tile.valid[64, 0]


def test_mosaic_takes_each_side_of_a_seam_from_its_file() -> None:
    lon_a, lat_a = centre(BANEPA_A)
    lon_b, lat_b = centre(BANEPA_B)
    with rasterio.open(BANEPA_A) as ds:
        seam_lat = ds.bounds.bottom
    grid = utm_grid((lon_a + lon_b) / 2, seam_lat, n=128)
    mosaic = open_imagery([BANEPA_A, BANEPA_B]).read(grid)
    a = RasterSource([BANEPA_A]).read(grid)
    b = RasterSource([BANEPA_B]).read(grid)
    assert a.valid[0, 64] and not a.valid[-1, 64]  # A is north of the seam
    assert b.valid[-1, 64] and not b.valid[0, 64]
    assert mosaic.valid.all()
    np.testing.assert_array_equal(mosaic.rgb[:, a.valid], a.rgb[:, a.valid])
    only_b = b.valid & ~a.valid
    np.testing.assert_array_equal(mosaic.rgb[:, only_b], b.rgb[:, only_b])


def _write_copy(path: Path, data: np.ndarray, like: Path, **extra: object) -> Path:
    with rasterio.open(like) as ds:
        profile = ds.profile | {"driver": "GTiff", "count": data.shape[0], "dtype": data.dtype}
    profile.pop("photometric", None)
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as out:
        out.write(data)
    return path


def test_mosaic_first_file_wins_and_only_touched_files_are_opened(tmp_path: Path) -> None:
    with rasterio.open(COGEO) as ds:
        data = ds.read()
    inverted = _write_copy(tmp_path / "inverted.tif", 255 - data, COGEO, tiled=True, compress="lzw")
    grid = utm_grid(*centre(COGEO), n=64)
    plain = RasterSource([COGEO]).read(grid)
    first = RasterSource([COGEO, inverted]).read(grid)
    second = RasterSource([inverted, COGEO]).read(grid)
    np.testing.assert_array_equal(first.rgb, plain.rgb)
    assert np.abs(second.rgb.astype(int) - (255 - plain.rgb.astype(int))).max() <= 1

    # Index by bounds: a file far from the tile is never opened (here: deleted after indexing).
    far = tmp_path / "banepa.tif"
    shutil.copy(BANEPA_A, far)
    shutil.copy(str(BANEPA_A) + ".aux.xml", str(far) + ".aux.xml")
    source = RasterSource([far, COGEO])
    far.unlink()
    np.testing.assert_array_equal(source.read(grid).rgb, plain.rgb)


def test_upsampling_a_coarse_file_works() -> None:
    path = BAD / "RGB.byte.tif"
    with rasterio.open(path) as ds:
        col, row = 400, 350
        x, y = ds.transform @ (col + 0.5, row + 0.5)
        expected = ds.read(window=rasterio.windows.Window(col, row, 1, 1))[:, 0, 0]
        lon, lat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True).transform(x, y)
    tile = open_imagery(path).read(utm_grid(lon, lat, n=64))  # 32 m inside one 300 m pixel
    assert tile.valid.all()
    np.testing.assert_array_equal(tile.rgb[:, 32, 32], expected)


def test_source_pickles_for_beam_workers() -> None:
    source = open_imagery(BANEPA)
    grid = utm_grid(*centre(BANEPA_A), n=32)
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone.read(grid).rgb, source.read(grid).rgb)


# --- bands and scaling -------------------------------------------------------------------------


def test_uint16_scaling_is_per_file_not_per_tile() -> None:
    lon, lat = centre(VEGAS)
    a_grid = utm_grid(lon, lat, n=96)
    t = a_grid.transform
    b_grid = PixelGrid(a_grid.crs, Affine(t.a, 0, t.c + 40 * t.a, 0, t.e, t.f + 30 * t.e), 96, 96)
    source = open_imagery(VEGAS)
    a, b = source.read(a_grid), source.read(b_grid)
    assert a.rgb.dtype == np.uint8 and a.valid.all() and b.valid.all()
    # The overlap of the two tiles agrees (up to warp rounding): the stretch comes from the file,
    # not the tile.
    diff = np.abs(a.rgb[:, 30:, 40:].astype(int) - b.rgb[:, :-30, :-40].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert a.rgb.min() < 40 and a.rgb.max() > 215  # a real stretch, not a dark image


def test_uint16_explicit_scale() -> None:
    grid = utm_grid(*centre(VEGAS), n=64)
    tile = open_imagery(VEGAS, scale=(100, 1100)).read(grid)
    with (
        rasterio.open(VEGAS) as ds,
        WarpedVRT(
            ds,
            crs=grid.crs,
            transform=grid.transform,
            width=64,
            height=64,
            resampling=Resampling.average,
        ) as vrt,
    ):
        raw = vrt.read().astype(float)
    expected = np.clip(np.rint((raw - 100) * 255 / 1000), 0, 255)
    np.testing.assert_array_equal(tile.rgb, expected.astype(np.uint8))


def test_four_band_uint16_needs_explicit_bands(tmp_path: Path) -> None:
    with rasterio.open(VEGAS) as ds:
        data = ds.read()
    four = _write_copy(tmp_path / "four.tif", np.concatenate([data, data[:1]]), VEGAS)
    with rasterio.open(four) as ds:
        assert ColorInterp.red not in ds.colorinterp
    with pytest.raises(ImageryError, match=r"four\.tif.*bands=\(r, g, b\)"):
        open_imagery(four)
    grid = utm_grid(*centre(VEGAS), n=64)
    tile = open_imagery(four, bands=(1, 2, 3)).read(grid)
    np.testing.assert_array_equal(tile.rgb, open_imagery(VEGAS).read(grid).rgb)
    with pytest.raises(ImageryError, match="not valid"):
        open_imagery(four, bands=(1, 2, 5))


def test_bgr_colour_interpretation_is_reordered(tmp_path: Path) -> None:
    with rasterio.open(COGEO) as ds:
        data = ds.read()
    bgr = _write_copy(tmp_path / "bgr.tif", data[::-1].copy(), COGEO, compress="lzw")
    with rasterio.open(bgr, "r+") as ds:
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    grid = utm_grid(*centre(COGEO), n=64)
    np.testing.assert_array_equal(
        open_imagery(bgr).read(grid).rgb, open_imagery(COGEO).read(grid).rgb
    )


def test_rgba_alpha_becomes_the_mask(tmp_path: Path) -> None:
    with rasterio.open(COGEO) as ds:
        data = ds.read()
    alpha = np.full(data.shape[1:], 255, np.uint8)
    alpha[:, :512] = 0  # western half transparent
    rgba = _write_copy(
        tmp_path / "rgba.tif",
        np.concatenate([data, alpha[None]]),
        COGEO,
        photometric="RGB",
        alpha="YES",
        compress="lzw",
    )
    grid = utm_grid(*centre(COGEO), n=64)
    tile = open_imagery(rgba).read(grid)
    assert tile.valid[:, -8:].all() and not tile.valid[:, :8].any()


# --- XYZ tiles ---------------------------------------------------------------------------------


def _tile_centre(x: int, y: int, z: int = 19) -> tuple[float, float]:
    left, bottom, right, top = tile_bounds_3857(x, y, z)
    return Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(
        (left + right) / 2, (bottom + top) / 2
    )


def _xyz_source_mean(grid: PixelGrid, x: int, y: int, z: int = 19) -> np.ndarray:
    left, bottom, right, top = tile_bounds_3857(x, y, z)
    path = NAIROBI / f"OAM-{x}-{y}-{z}.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            data = ds.read()
    px = data.shape[1]
    gl, gb, gr, gt = transform_bounds(grid.crs, "EPSG:3857", *grid.bounds)
    c0, c1 = (int(round((v - left) / (right - left) * px)) for v in (gl, gr))
    r0, r1 = (int(round((top - v) / (top - bottom) * px)) for v in (gt, gb))
    return data[:, r0:r1, c0:c1].reshape(3, -1).mean(axis=1)


def test_xyz_oam_names_give_the_tile_pixels() -> None:
    source = open_imagery(NAIROBI)
    assert isinstance(source, XYZSource) and source.zoom == 19
    grid = utm_grid(*_tile_centre(315878, 264050), n=96)
    tile = source.read(grid)
    assert tile.valid.all()
    np.testing.assert_allclose(
        tile.rgb.reshape(3, -1).mean(axis=1), _xyz_source_mean(grid, 315878, 264050), atol=3
    )
    w, s, e, n = source.bounds_lonlat()
    assert w < _tile_centre(315878, 264050)[0] < e and s < _tile_centre(315879, 264051)[1] < n


def test_xyz_zxy_folder_and_template_match_oam_names(tmp_path: Path) -> None:
    for path in NAIROBI.glob("OAM-*.png"):
        _, x, y, z = path.stem.split("-")
        (tmp_path / z / x).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / z / x / f"{y}.png")
    # A grid on the corner where the four tiles meet.
    left, _, _, top = tile_bounds_3857(315879, 264051, 19)
    lon, lat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(left, top)
    grid = utm_grid(lon, lat, n=128)
    expected = open_imagery(NAIROBI).read(grid)
    assert expected.valid.all()
    for spec in (tmp_path, str(tmp_path / "{z}" / "{x}" / "{y}.png")):
        source = open_imagery(spec)
        assert isinstance(source, XYZSource)
        tile = source.read(grid)
        np.testing.assert_array_equal(tile.rgb, expected.rgb)
        np.testing.assert_array_equal(tile.valid, expected.valid)


def test_xyz_partial_coverage_masks_missing_tiles() -> None:
    left, bottom, right, top = tile_bounds_3857(315879, 264050, 19)  # east edge of the block
    lon, lat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(
        right, (bottom + top) / 2
    )
    tile = open_imagery(NAIROBI).read(utm_grid(lon, lat, n=64))
    assert tile.valid[:, :28].all() and not tile.valid[:, 36:].any()


def test_xyz_without_tiles_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageryError, match="no XYZ tiles"):
        XYZSource(tmp_path)
    with pytest.raises(ImageryError, match="holds no"):
        open_imagery(tmp_path)


# --- STAC --------------------------------------------------------------------------------------


def test_stac_item_reads_its_asset() -> None:
    source = open_imagery(DATA / "stac" / "item.json")
    assert isinstance(source, StacSource)
    assert source.hrefs == [str(BANEPA_A)]
    grid = utm_grid(*centre(BANEPA_A), n=64)
    np.testing.assert_array_equal(source.read(grid).rgb, RasterSource([BANEPA_A]).read(grid).rgb)


def test_stac_item_collection_is_a_mosaic() -> None:
    source = open_imagery(DATA / "stac" / "item_collection.json")
    assert source.hrefs == [str(BANEPA_A), str(BANEPA_B)]
    with rasterio.open(BANEPA_A) as ds:
        seam_lat = ds.bounds.bottom
    grid = utm_grid(centre(BANEPA_A)[0], seam_lat, n=96)
    tile = source.read(grid)
    assert tile.valid.all()
    np.testing.assert_array_equal(tile.rgb, RasterSource([BANEPA_A, BANEPA_B]).read(grid).rgb)


def test_stac_asset_choice_and_errors(tmp_path: Path) -> None:
    item = json.loads((DATA / "stac" / "item.json").read_text())
    assert StacSource(DATA / "stac" / "item.json", asset="visual").hrefs == [str(BANEPA_A)]
    with pytest.raises(ImageryError, match="no asset 'nir'"):
        StacSource(DATA / "stac" / "item.json", asset="nir")
    item["assets"] = {"thumbnail": item["assets"]["thumbnail"]}
    (tmp_path / "thumb_only.json").write_text(json.dumps(item))
    with pytest.raises(ImageryError, match="role 'data'"):
        open_imagery(tmp_path / "thumb_only.json")
    item["assets"] = {"visual": {"href": "/vsizip/evil.zip/a.tif", "roles": ["data"]}}
    (tmp_path / "evil.json").write_text(json.dumps(item))
    with pytest.raises(ImageryError, match="virtual path"):
        open_imagery(tmp_path / "evil.json")
    (tmp_path / "catalog.json").write_text(json.dumps({"type": "Catalog", "id": "x"}))
    with pytest.raises(ImageryError, match="not an Item or ItemCollection"):
        open_imagery(tmp_path / "catalog.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ImageryError, match="broken.json"):
        open_imagery(tmp_path / "broken.json")


# --- hostile files -----------------------------------------------------------------------------


def test_declared_size_cap_is_checked_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = tmp_path / "huge.tif"
    with rasterio.open(
        huge,
        "w",
        driver="GTiff",
        width=200_000,
        height=200_000,
        count=3,
        dtype="uint8",
        crs="EPSG:32637",
        transform=Affine(0.5, 0, 0, 0, -0.5, 0),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        sparse_ok=True,
        BIGTIFF="YES",
    ):
        pass
    assert huge.stat().st_size < 50 * 2**20

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were read")

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", no_read)
    with pytest.raises(ImageryError, match=r"huge\.tif.*200000 x 200000.*cap"):
        open_imagery(huge, limits=ReadLimits(max_total_bytes=2**36))
    with pytest.raises(ImageryError, match=r"huge\.tif.*bands.*cap"):
        open_imagery(huge, limits=ReadLimits(max_bands=2))


def test_block_cap_counts_what_one_read_decodes() -> None:
    # RGB.byte.tif is stripped, 3 rows of 791 px x 3 bands per strip (7 KiB).
    with pytest.raises(ImageryError, match=r"RGB\.byte\.tif.*block/strip \(791 x 3\).*cap"):
        open_imagery(BAD / "RGB.byte.tif", limits=ReadLimits(max_block_bytes=4096))
    open_imagery(BAD / "RGB.byte.tif", limits=ReadLimits(max_block_bytes=8192))
    # The COG has 512 x 512 tiles of 3 bands (768 KiB).
    with pytest.raises(ImageryError, match=r"cogeo.*block/strip \(512 x 512\)"):
        open_imagery(COGEO, limits=ReadLimits(max_block_bytes=2**19))
    # The whole image of a JPEG is one block.
    with pytest.raises(ImageryError, match=r"OAM-386690-220241-19\.tif.*JPEG image"):
        open_imagery(BANEPA_A, limits=ReadLimits(max_block_bytes=2**19))


def test_vrt_disguised_as_tif_is_refused(tmp_path: Path) -> None:
    shutil.copy(BAD / "RGB.byte.tif", tmp_path / "RGB.byte.tif")
    with rasterio.open(BAD / "RGB.byte.tif") as ds:
        gt = ", ".join(str(v) for v in ds.transform.to_gdal())
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{i}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">RGB.byte.tif</SourceFilename>'
        f"<SourceBand>{i}</SourceBand></SimpleSource></VRTRasterBand>"
        for i in (1, 2, 3)
    )
    disguised = tmp_path / "innocent.tif"
    disguised.write_text(
        f'<VRTDataset rasterXSize="791" rasterYSize="718"><SRS>EPSG:32618</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>"
    )
    with rasterio.open(disguised) as ds:  # plain GDAL follows it...
        assert ds.driver == "VRT"
    with pytest.raises(ImageryError, match=r"innocent\.tif.*not in an allowed raster format"):
        open_imagery(disguised)  # ...we do not


@pytest.mark.parametrize(
    "spec",
    [
        "/vsizip/x.zip/a.tif",
        "/vsicurl/https://example.com/a.tif",
        "data/../vsimem/a.tif",
        "http://example.com/a.tif",
        "ftp://example.com/a.tif",
        "file:///tmp/a.tif",
        "GTIFF_DIR:1:a.tif",
        "HDF5:a.h5://band",
        "file.tif?x=1",
        "a.tif#frag",
        "<VRTDataset></VRTDataset>",
        "gs://bucket",
        "s3://",
        "s3://bucket/key?versionId=1",
        "https://",
        "a\nb.tif",
    ],
)
def test_path_allow_list(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("GDAL was asked to open a refused path")

    monkeypatch.setattr(rasterio, "open", no_open)
    with pytest.raises(ImageryError):
        open_imagery(spec)


def test_remote_urls_map_to_gdal_virtual_paths() -> None:
    assert gdal_path("gs://bucket/dir/a.tif") == "/vsigs/bucket/dir/a.tif"
    assert gdal_path("s3://bucket/a.tif") == "/vsis3/bucket/a.tif"
    assert gdal_path("https://host/a.tif?sig=1") == "/vsicurl/https://host/a.tif?sig=1"
    assert gdal_path("/data/a.tif") == "/data/a.tif"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImageryError, match=r"nope\.tif does not exist"):
        open_imagery(tmp_path / "nope.tif")


_EXPECTED_BAD = {
    "389225main_sw_1965_1024.jpg": "no georeference.*XYZ",
    "RGB.byte.gcp.vrt": "not in an allowed raster format",
    "RGB.byte.rpc.vrt": "not in an allowed raster format",
    "two-subs.h5": "not in an allowed raster format",
    "corrupt.tif": "could not be read",
    "rotated.tif": "no georeference",
    "float_nan.tif": "no georeference",
    "test_esri_wkt.tif": r"bands=\(r, g, b\)",
    "float_raster_with_nodata.tif": r"bands=\(r, g, b\)",
}


@pytest.mark.parametrize("name", sorted(p.name for p in BAD.iterdir()))
def test_every_bad_input_gets_a_clear_error_or_is_handled(name: str) -> None:
    path = BAD / name
    if name in ("RGB.byte.tif", "all-nodata.tif"):
        source = open_imagery(path)
        w, s, e, n = source.bounds_lonlat()
        tile = source.read(utm_grid((w + e) / 2, (s + n) / 2, n=64))
        assert tile.empty == (name == "all-nodata.tif")
        return
    with pytest.raises(ImageryError) as info:
        source = open_imagery(path)
        w, s, e, n = source.bounds_lonlat()
        source.read(utm_grid((w + e) / 2, (s + n) / 2, n=64))
    assert name in str(info.value)
    assert info.match(_EXPECTED_BAD[name])


def test_float_nodata_with_explicit_bands_masks_nodata() -> None:
    path = BAD / "float_raster_with_nodata.tif"
    source = open_imagery(path, bands=(1, 1, 1))
    with rasterio.open(path) as ds:
        mask = ds.read_masks(1)
        to_lonlat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        centres = {
            ok: ds.transform @ (c + 0.5, r + 0.5)
            for ok, (r, c) in ((False, (6, 10)), (True, (2, 2)))
        }
    assert mask[6, 10] == 0 and mask[2, 2] == 255
    for ok, (x, y) in centres.items():
        tile = source.read(utm_grid(*to_lonlat.transform(x, y), n=64))  # 32 m in a 500 m pixel
        assert tile.valid.all() if ok else tile.empty


def test_all_nodata_four_band_file_maps_bgr_and_is_empty() -> None:
    source = open_imagery(BAD / "all-nodata.tif")  # blue, green, red, undefined
    assert source._files[0].bands == (3, 2, 1)
    with rasterio.open(BAD / "all-nodata.tif") as ds:
        x, y = ds.transform @ (35, 1200)
        lon, lat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True).transform(x, y)
    assert source.read(utm_grid(lon, lat, n=64)).empty


def test_single_band_esri_wkt_file_needs_bands_and_then_reads() -> None:
    path = BAD / "test_esri_wkt.tif"  # 2 x 2 px of 10 m, uint16, ESRI:102039 (Albers)
    with pytest.raises(ImageryError, match=r"test_esri_wkt\.tif.*1 band"):
        open_imagery(path)
    source = open_imagery(path, bands=(1, 1, 1))
    tile = source.read(utm_grid(*centre(path), n=16))
    assert tile.valid.all()
    assert (tile.rgb[0] == tile.rgb[1]).all() and (tile.rgb[1] == tile.rgb[2]).all()
