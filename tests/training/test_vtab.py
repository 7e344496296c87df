"""ob-vtab on real data: UC Merced scenes (a subset kept in tests/data) and building chips cut
from the real Banepa tiles; ImageNet features must beat random ones."""

import json
from pathlib import Path

import numpy as np
import pytest

from open_buildings.commands import vtab as ob_vtab
from open_buildings.training import vtab
from open_buildings.training.representation import encoder_features
from open_buildings.training.vtab_tasks import (
    N_TRAIN,
    N_VAL,
    Task,
    building_tasks,
    image_folder_task,
    vtab_1k,
)

DATA = Path(__file__).resolve().parents[1] / "data"
BANEPA = ("banepa", str(DATA / "imagery/banepa"), str(DATA / "labels/banepa_4tiles.geojson"))
NAIROBI = ("nairobi", str(DATA / "imagery/nairobi"), str(DATA / "labels/nairobi_ke.geojson"))
# snow, road and forest: a real tile without buildings (no label lies on it)
EMPTY = ("snow", str(DATA / "imagery/rasterio_cogeo_0.6m_no_buildings.tif"), BANEPA[2])


@pytest.fixture(scope="module")
def uc_merced() -> Task:
    return image_folder_task("uc_merced", DATA / "uc_merced", 64)


def test_scene_folders_are_read_with_a_fixed_stratified_test_split(uc_merced) -> None:
    assert uc_merced.images.shape == (105, 3, 64, 64) and uc_merced.images.dtype == np.uint8
    assert len(uc_merced.classes) == 21 and "denseresidential" in uc_merced.classes
    assert not set(uc_merced.pool) & set(uc_merced.test)
    assert len(uc_merced.pool) + len(uc_merced.test) == 105
    assert set(uc_merced.labels[uc_merced.test]) == set(range(21))  # every class is tested
    again = image_folder_task("uc_merced", DATA / "uc_merced", 64)
    assert (again.test == uc_merced.test).all()


def test_vtab_1k_draws_800_and_200_from_the_pool_per_seed() -> None:
    labels = np.arange(3000) % 10
    task = Task(
        "t",
        np.zeros((3000, 3, 1, 1), np.uint8),
        labels,
        list("abcdefghij"),
        np.arange(2500),
        np.arange(2500, 3000),
    )
    train, val = vtab_1k(task, 0)
    assert (len(train), len(val)) == (N_TRAIN, N_VAL) and not set(train) & set(val)
    assert set(train) | set(val) <= set(task.pool)
    assert np.bincount(labels[train]).min() == N_TRAIN // 10  # stratified
    other, _ = vtab_1k(task, 1)
    assert set(other) != set(train)
    small = Task("s", task.images[:50], labels[:50], task.classes, np.arange(40), np.arange(40, 50))
    train, val = vtab_1k(small, 0)
    assert (len(train), len(val)) == (32, 8)  # all of a small pool, split 4:1


def test_imagenet_features_beat_random_ones_on_uc_merced(uc_merced) -> None:
    scores = {}
    for spec in ("unet_efficientnet_lite0:imagenet", "unet_efficientnet_lite0:random"):
        features = encoder_features(vtab.load_backbone(spec)(), uc_merced.images)
        assert features.shape == (105, 320)
        records = vtab.ridge_scores(features, uc_merced, seeds=[0, 1])
        assert all(r["alpha"] in vtab.ALPHAS for r in records)
        scores[spec] = np.mean([r["top1"] for r in records])
    # 42 test images of 21 classes from 3 examples a class: chance is 0.048
    assert (
        scores["unet_efficientnet_lite0:imagenet"] > scores["unet_efficientnet_lite0:random"] + 0.2
    )


def test_building_chips_and_their_three_labels() -> None:
    presence, count, cover = building_tasks([BANEPA, NAIROBI, EMPTY], 64)
    assert presence.images.shape[1:] == (3, 64, 64) and len(presence.images) >= 10
    assert (presence.labels == (count.labels > 0)).all()
    assert ((cover.labels == 0) <= (count.labels == 0)).all()  # no building pixel: none centred
    assert len(set(presence.labels)) == 2 and len(set(count.labels)) >= 3
    # whole tiles are split: no tile gives chips to both sides
    assert not set(presence.groups[presence.pool]) & set(presence.groups[presence.test])


def test_ob_vtab_writes_the_table_with_a_random_floor(tmp_path: Path, capsys) -> None:
    areas = tmp_path / "buildings.yaml"
    areas.write_text(
        "areas:\n"
        + "".join(
            f"  - {{name: {n}, imagery: {i}, labels: {la}}}\n"
            for n, i, la in (BANEPA, NAIROBI, EMPTY)
        )
    )
    argv = [
        "default",
        "--seeds",
        "2",
        "--data-dir",
        str(DATA),
        "--buildings",
        str(areas),
        "--size",
        "48",
        "--chip",
        "64",
        "--out",
        str(tmp_path / "v"),
    ]
    assert ob_vtab.main(argv) == 0
    result = json.loads((tmp_path / "v" / "vtab.json").read_text())
    assert list(result["backbones"]) == ["default", "unet_efficientnet_lite1:random"]
    assert set(result["tasks"]) == {
        "uc_merced",
        "building_presence",
        "building_count",
        "building_cover",
    }
    row = result["backbones"]["default"]["uc_merced"]
    assert len(row["seeds"]) == 2 and 0 <= row["mean"] <= 1 and row["std"] >= 0
    assert any("eurosat" in s for s in result["skipped"])
    table = (tmp_path / "v" / "vtab.md").read_text()
    assert "| unet_efficientnet_lite1:random |" in table and "skipped: resisc45" in table
    assert ob_vtab.main(argv) == 2  # the output exists
    assert "exists" in capsys.readouterr().err


def test_the_finetune_protocol_trains_the_encoder(uc_merced) -> None:
    factory = vtab.load_backbone("unet_tiny:random")
    records = vtab.finetune_scores(factory, uc_merced, seeds=[0], steps=3, batch=8)
    assert records[0]["lr"] in vtab.LEARNING_RATES and 0 <= records[0]["top1"] <= 1


def test_no_task_or_a_bad_backbone_is_a_message(tmp_path: Path, capsys) -> None:
    assert ob_vtab.main(["unet_tiny:random", "--out", str(tmp_path / "a")]) == 2
    assert "no task to run" in capsys.readouterr().err
    argv = ["no_such_model", "--data-dir", str(DATA), "--out", str(tmp_path / "b")]
    assert ob_vtab.main(argv) == 2
    assert "no_such_model" in capsys.readouterr().err
