"""ob-finetune's plan on real labelled fixtures: the labels read, the spatial split, bad input."""

from pathlib import Path

import geopandas as gpd
import pytest
import shapely

from open_buildings.errors import ConfigError
from open_buildings.geo import grid
from open_buildings.geo.imagery import open_imagery
from open_buildings.training import finetune as plan
from open_buildings.training.scenes import read_labels

DATA = Path(__file__).resolve().parents[1] / "data"
BANEPA = str(DATA / "imagery" / "banepa")
LABELS = DATA / "labels" / "banepa_4tiles.geojson"


@pytest.fixture(scope="module")
def source():
    return open_imagery(BANEPA)


@pytest.fixture(scope="module")
def labels() -> gpd.GeoDataFrame:
    return read_labels(LABELS)


def test_the_split_holds_back_whole_tiles_with_a_fifth_of_the_buildings(source, labels) -> None:
    area = plan.area_of_interest(source, None)
    split = plan.split_tiles(labels, area, source)
    assert split.held and split.train and not set(split.held) & set(split.train)
    total = split.n_train + split.n_held
    assert split.n_held >= plan.HELD_SHARE * total and split.n_train > split.n_held
    # every building on the imagery is counted in the tile that owns its centroid
    spec = grid.GridSpec(level=plan.SPLIT_LEVEL)
    c = shapely.centroid(labels.geometry.values)
    c = c[shapely.within(c, area)]
    for tiles, n in ((split.train, split.n_train), (split.held, split.n_held)):
        owned = sum(
            int(grid.tile_from_id(t, spec).owns(shapely.get_x(c), shapely.get_y(c)).sum())
            for t in tiles
        )
        assert owned == n
    assert plan.split_tiles(labels, area, source) == split  # the split does not drift
    held = plan.tiles_region(split.held, area)
    assert held.area > 0 and shapely.within(held, area.buffer(1e-9))


def test_the_config_trains_on_the_split_from_the_base(source, labels, tmp_path: Path) -> None:
    split = plan.split_tiles(labels, plan.area_of_interest(source, None), source)
    cfg = plan.finetune_config(
        "models/default",
        "unet_efficientnet_lite1",
        imagery=BANEPA,
        labels=str(LABELS),
        split=split,
        out=str(tmp_path),
        minutes=3,
        seed=2,
    )
    assert cfg.train[0].tiles == split.train and cfg.val[0].tiles == split.held
    assert cfg.start_from == "models/default" and cfg.init_from is None
    assert cfg.mixup.enabled and cfg.lr_schedule == "constant" and cfg.seed == 2
    assert cfg.stopping.max_minutes == 3 and cfg.stopping.keep_best and cfg.stopping.patience


def test_labels_in_any_crs_are_read_in_lon_lat(labels, tmp_path: Path) -> None:
    utm = labels.to_crs(labels.estimate_utm_crs())
    utm.to_file(tmp_path / "labels.gpkg")
    again = read_labels(tmp_path / "labels.gpkg")
    assert again.crs.to_epsg() == 4326 and len(again) == len(labels)
    assert shapely.equals_exact(again.geometry.values, labels.geometry.values, 1e-7).all()


def test_projected_coordinates_without_a_crs_are_refused(labels, tmp_path: Path) -> None:
    utm = labels.to_crs(labels.estimate_utm_crs())
    utm.set_crs(None, allow_override=True).to_file(tmp_path / "labels.shp")
    (tmp_path / "labels.prj").unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="has no CRS"):
        read_labels(tmp_path / "labels.shp")
    path = tmp_path / "utm.geojson"
    path.write_text(utm.to_json(to_wgs84=False).replace('"crs"', '"_crs"'))
    with pytest.raises(ConfigError, match="not longitudes and latitudes"):
        read_labels(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.translate(1.0, 0.0), "do not overlap the imagery"),
        (lambda f: f.iloc[:15], r"only \d+ labelled buildings lie on the imagery"),
    ],
)
def test_labels_that_cannot_train_are_refused(source, labels, change, message) -> None:
    changed = change(labels)
    frame = gpd.GeoDataFrame(geometry=getattr(changed, "geometry", changed), crs=4326)
    with pytest.raises(ConfigError, match=message):
        plan.split_tiles(frame, plan.area_of_interest(source, None), source)


def test_labels_in_one_tile_cannot_be_split(source, labels) -> None:
    split = plan.split_tiles(labels, plan.area_of_interest(source, None), source)
    core = grid.tile_from_id(split.train[0], grid.GridSpec(level=plan.SPLIT_LEVEL)).core
    one_tile = labels[shapely.within(shapely.centroid(labels.geometry.values), core)]
    assert len(one_tile) >= plan.MIN_BUILDINGS
    with pytest.raises(ConfigError, match="lie in one 16-level tile"):
        plan.split_tiles(one_tile, plan.area_of_interest(source, None), source)


def test_unreadable_labels_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "labels.geojson"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read as vector data"):
        read_labels(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        read_labels(tmp_path / "missing.geojson")


def test_unlabelled_tiles_are_found_and_self_trained_on(tmp_path: Path, monkeypatch) -> None:
    # Nairobi's labels with one tile's removed: that tile is imagery without labels, which the
    # base model's probabilities (ob-infer on the split's grid) turn into soft targets. The
    # fixture is four slippy tiles (150 m), so the split is cut finer here (75 m, 96 px chips).
    import argparse

    from open_buildings.commands.evaluate_model import write_region
    from open_buildings.commands.finetune import _teacher
    from open_buildings.training.loop import train

    monkeypatch.setattr(plan, "SPLIT_LEVEL", 17)
    monkeypatch.setattr(plan, "CHIP", 96)
    source = open_imagery(str(DATA / "imagery" / "nairobi"))
    labels = read_labels(DATA / "labels" / "nairobi_ke.geojson")
    area = plan.area_of_interest(source, None)
    every = plan.split_tiles(labels, area, source)
    cores = {t: grid.tile_from_id(t, grid.GridSpec(level=17)).core for t in every.train}
    drop = next(t for t, core in cores.items() if shapely.within(core, area))
    dropped = grid.tile_from_id(drop, grid.GridSpec(level=17))
    c = shapely.centroid(labels.geometry.values)
    labels = labels[~dropped.owns(shapely.get_x(c), shapely.get_y(c))]
    split = plan.split_tiles(labels, area, source)
    assert drop in split.unlabelled and drop not in split.train + split.held
    args = argparse.Namespace(imagery=str(DATA / "imagery" / "nairobi"), base="default")
    region = write_region(plan.tiles_region(split.unlabelled, area), tmp_path / "u.geojson")
    teacher = _teacher(args, region, len(split.unlabelled), tmp_path / "teacher", [])
    assert (Path(teacher) / "probabilities" / f"{drop}.tif").is_file()
    labels_path = str(tmp_path / "labels.geojson")
    labels.to_file(labels_path, driver="GeoJSON")
    cfg = plan.finetune_config(
        str(DATA.parents[1] / "models" / "default"), "unet_efficientnet_lite1",
        imagery=args.imagery, labels=labels_path, split=split, out=str(tmp_path / "run"),
        minutes=10, teacher=teacher,
    )  # fmt: skip
    assert cfg.self_training.enabled and cfg.self_training.unlabelled[0].tiles == split.unlabelled
    cfg = cfg.model_copy(update={"steps": 2, "stopping": cfg.stopping.model_copy(
        update={"patience": None, "keep_best": False})})  # fmt: skip
    history = train(cfg, progress=False)["history"]
    assert all(h["kl"] >= 0 for h in history)  # the soft-KL term on the unlabelled chips
