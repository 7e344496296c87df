"""Validation tiles are never trained on; self-training reads an ob-infer run's probability COGs."""

from pathlib import Path

import numpy as np
import pytest
import rasterio.features
import torch

from open_buildings.commands import infer as ob_infer
from open_buildings.commands.evaluate_model import write_bbox_region
from open_buildings.errors import ConfigError
from open_buildings.geo import grid as geogrid
from open_buildings.geo.imagery import open_imagery
from open_buildings.models.checkpoint import load_checkpoint, save_checkpoint
from open_buildings.models.registry import build_model
from open_buildings.training import batches
from open_buildings.training.loop import train
from open_buildings.training.validate import predict
from tests.training.conftest import DATA

BANEPA = "{name: banepa, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson}"
VAL = (
    "val=[{name: banepa_val, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson, "
    "tiles: [39eb0f33]}]"
)


def _core_mask(tile_id: str, scene) -> np.ndarray:
    import geopandas as gpd

    core = geogrid.tile_from_id(tile_id).core
    local = gpd.GeoSeries([core], crs="EPSG:4326").to_crs(scene.grid.crs).iloc[0]
    g = scene.grid
    return rasterio.features.rasterize(
        [(local, 1)], out_shape=(g.height, g.width), transform=g.transform, dtype="uint8"
    ).astype(bool)


def test_a_validation_tile_is_skipped_and_blanked_in_its_neighbours(config_factory) -> None:
    cfg = config_factory(VAL)
    everything = batches.load_areas(cfg, cfg.train, labelled=True)
    assert sorted(s.tile_id for s in everything) == ["39eb08cd", "39eb0f33"]
    val = batches.load_areas(cfg, cfg.val, labelled=True)
    assert [s.tile_id for s in val] == ["39eb0f33"]
    held = batches.held_out_tiles(cfg.val, val)
    kept = batches.load_areas(cfg, cfg.train, labelled=True, held_out=held)
    assert [s.tile_id for s in kept] == ["39eb08cd"]
    before = next(s for s in everything if s.tile_id == "39eb08cd")
    after = kept[0]
    inside = _core_mask("39eb0f33", after)
    # the neighbour's margin reached into the held-out tile's imagery; now none of it is seen
    assert (before.valid & inside).sum() > 1000
    assert not (after.valid & inside).any()
    assert not after.rgb[:, inside].any()
    assert (after.valid == (before.valid & ~inside)).all()


def test_a_run_with_every_tile_held_out_says_so(config_factory) -> None:
    cfg = config_factory(
        "val=[{name: v, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson}]"
    )
    with pytest.raises(ConfigError, match="held out"):
        train(cfg, progress=False)


def _teacher_run(tmp_path: Path) -> tuple[Path, Path]:
    teacher = tmp_path / "teacher.safetensors"
    torch.manual_seed(3)
    save_checkpoint(build_model("unet_tiny"), teacher)
    bounds = open_imagery(str(DATA / "imagery" / "banepa")).bounds_lonlat()
    region = write_bbox_region(bounds, tmp_path / "region.geojson")
    out = tmp_path / "teacher_out"
    args = [region, "--imagery", str(DATA / "imagery" / "banepa"), "--model", str(teacher)]
    args += ["--write-probabilities", "--min-confidence", "0", "--out", str(out), "--no-progress"]
    assert ob_infer.main(args) == 0
    return teacher, out


def test_self_training_reads_the_teachers_ob_infer_probabilities(
    config_factory, tmp_path: Path
) -> None:
    teacher, out = _teacher_run(tmp_path)
    assert sorted(p.name for p in (out / "probabilities").iterdir()) == [
        "39eb08cd.tif",
        "39eb0f33.tif",
    ]
    cfg = config_factory(
        VAL,
        "steps=2",
        "self_training={enabled: true, ratio: 0.5, temperature: 2.0, unlabelled: "
        f"[{{name: banepa_u, imagery: imagery/banepa, probabilities: {out}}}]}}",
    )
    pool, targets = batches.with_teacher(
        cfg, cfg.self_training.unlabelled, {str(Path(cfg.val[0].imagery).resolve()): {"39eb0f33"}}
    )
    # the held-out tile is not used for self-training either
    assert [s.tile_id for s in pool.scenes] == ["39eb08cd"]
    scene, soft = pool.scenes[0], targets[0]
    # the file holds the teacher's own probabilities on the scene's grid (to 1/250), as ob-infer
    # saw the tile: with its whole margin
    whole = batches.load_areas(cfg, cfg.self_training.unlabelled, labelled=False)
    rgb = next(s.rgb for s in whole if s.tile_id == "39eb08cd")
    logits = torch.from_numpy(predict(load_checkpoint(teacher), rgb))
    expected = torch.sigmoid(torch.logit(torch.sigmoid(logits).clamp(1e-3, 1 - 1e-3)) / 2.0)
    diff = np.abs(soft - expected.numpy())[:, scene.valid]
    assert scene.valid.sum() > 10_000 and float(diff.max()) < 0.01
    result = train(cfg, progress=False)
    assert all(h["kl"] > 0 for h in result["history"])


def test_missing_teacher_probabilities_say_how_to_make_them(config_factory, tmp_path) -> None:
    cfg = config_factory(
        "steps=1",
        "self_training={enabled: true, unlabelled: "
        f"[{{name: u, imagery: imagery/banepa, probabilities: {tmp_path / 'none'}}}]}}",
    )
    with pytest.raises(ConfigError, match="ob-infer --write-probabilities"):
        train(cfg, progress=False)
