"""ob-chips on the real Banepa tiles: shards, manifest, splits by whole tile, targets, teacher
chips, determinism, resume after a kill, dead letters."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from open_buildings.commands import chips as ob_chips
from open_buildings.config import load_config
from open_buildings.errors import ShardError
from open_buildings.geo import grid as geogrid
from open_buildings.geo.imagery import open_imagery
from open_buildings.models import heads
from open_buildings.training import chip_shards
from open_buildings.training.chip_cut import window_starts
from open_buildings.training.config import ChipsConfig
from open_buildings.training.scenes import read_labels, read_scene
from tests.training.conftest import DATA

LABELS = "labels/banepa_4tiles.geojson"
TRAIN = f"train=[{{name: banepa, imagery: imagery/banepa, labels: {LABELS}}}]"
VAL = f"val=[{{name: banepa_val, imagery: imagery/banepa, labels: {LABELS}, tiles: [39eb08cd]}}]"
BASE = [f"data_root={DATA}", TRAIN, VAL, "chip={size: 128, stride: 64}", "tiles_per_shard=1"]


def _config(folder: Path) -> str:
    """The chips config as a file (an ``ob-chips`` run needs one)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chips.yaml"
    path.write_text("\n".join(item.replace("=", ": ", 1) for item in BASE) + "\n")
    return str(path)


def _run(out: Path, *extra: str) -> dict:
    args = []
    for item in extra:
        args += ["-o", item]
    assert ob_chips.main([_config(out.parent / "cfg"), *args, "--out", str(out)]) == 0
    return json.loads((out / chip_shards.MANIFEST_NAME).read_text())


@pytest.fixture(scope="module")
def chipset_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chips") / "out"
    _run(out)
    return out


def test_the_manifest_lists_whole_shards_split_by_tile(chipset_dir: Path) -> None:
    m = json.loads((chipset_dir / "manifest.json").read_text())
    assert not (chipset_dir / ".work").exists()  # removed after a run without failures
    tiles = {(t["split"], t["tile_id"]) for t in m["tiles"]}
    assert tiles == {("train", "39eb0f33"), ("val", "39eb08cd")}
    assert m["held_out"] == {os.path.realpath(DATA / "imagery" / "banepa"): ["39eb08cd"]}
    chipset = chip_shards.open_chipset(chipset_dir)
    for shard in chipset.shards:
        table = pq.read_table(chipset_dir / shard.name)
        assert set(table.column("split").to_pylist()) == {shard.split}
        assert table.num_rows == shard.chips
        assert chip_shards.ShardReader(chipset).column(shard, "buildings").size == shard.chips
    for split in ("train", "val"):
        assert m["splits"][split]["chips"] == sum(s.chips for s in chipset.split(split))
    assert m["splits"]["train"]["chips"] > 10
    # the labelled buildings with imagery in each tile's core, each once
    assert m["splits"]["train"]["buildings"] == 105 and m["splits"]["val"]["buildings"] == 43


def test_windows_reach_into_the_margin_by_their_context(tmp_path: Path) -> None:
    # no validation tile, so each tile's margin towards the other holds imagery
    _run(tmp_path / "out", "chip={size: 128, stride: 64, context: 48}", "val=[]")
    chipset = chip_shards.open_chipset(tmp_path / "out")
    source, labels = open_imagery(str(DATA / "imagery" / "banepa")), read_labels(DATA / LABELS)
    scenes: dict[str, object] = {}
    shown = 0
    for shard in chipset.split("train"):
        for row in pq.read_table(tmp_path / "out" / shard.name).to_pylist():
            if row["tile_id"] not in scenes:
                tile = geogrid.tile_from_id(row["tile_id"])
                scenes[row["tile_id"]] = read_scene("banepa", source, labels, tile)
            scene = scenes[row["tile_id"]]
            r, c = row["row"], row["col"]
            outside = ~scene.core[r : r + 128, c : c + 128]
            chip = chip_shards.decode(row, chipset)
            assert not chip["usable"][outside].any()  # the margin is never trained on
            np.testing.assert_array_equal(chip["image"], scene.rgb[:, r : r + 128, c : c + 128])
            shown += int((scene.valid[r : r + 128, c : c + 128] & outside).sum())
    assert shown > 128 * 48  # but its imagery is there to be seen


def test_a_chip_holds_its_window_of_the_tile_and_the_heads_targets(chipset_dir: Path) -> None:
    chipset = chip_shards.open_chipset(chipset_dir)
    shard = chipset.split("train")[0]
    rows = pq.read_table(chipset_dir / shard.name).to_pylist()
    row = max(rows, key=lambda r: r["buildings"])
    chip = chip_shards.decode(row, chipset)
    tile = geogrid.tile_from_id(row["tile_id"])
    scene = read_scene(
        "banepa",
        open_imagery(str(DATA / "imagery" / "banepa")),
        read_labels(DATA / LABELS),
        tile,
        held=["39eb08cd"],
    )
    r, c, s = row["row"], row["col"], 128
    assert r in window_starts(0, scene.valid.shape[0], s, s) or r >= 0
    np.testing.assert_array_equal(chip["image"], scene.rgb[:, r : r + s, c : c + s])
    usable = (scene.valid & scene.core)[r : r + s, c : c + s]
    np.testing.assert_array_equal(chip["usable"], usable)
    made = heads.make_targets(scene.instances)  # on the whole tile, then cut
    np.testing.assert_array_equal(chip["target"], made.target[:, r : r + s, c : c + s] > 0.5)
    np.testing.assert_allclose(chip["weight"], made.weight[r : r + s, c : c + s], rtol=1e-3)
    assert row["buildings"] == len(
        set(np.unique(scene.instances[r : r + s, c : c + s][usable])) - {0}
    )
    assert row["building_px"] == (chip["target"][0].astype(bool) & usable).sum()
    assert usable.mean() >= 0.5


@pytest.mark.parametrize("context", [0, 32])
def test_overlapping_chips_count_each_pixel_once(tmp_path: Path, context: int) -> None:
    _run(tmp_path / "out", f"chip={{size: 96, stride: 32, context: {context}}}")
    chipset = chip_shards.open_chipset(tmp_path / "out")
    rows = [
        row
        for shard in chipset.split("train")
        for row in pq.read_table(tmp_path / "out" / shard.name).to_pylist()
    ]
    tiles = {row["tile_id"] for row in rows}
    assert tiles
    for tile in tiles:
        mine = [row for row in rows if row["tile_id"] == tile]
        assert len(mine) > 10
        span = max(max(row["row"], row["col"]) for row in mine) + 96
        held = np.zeros((span, span), np.uint16)  # chips holding each pixel of the tile
        building = np.zeros((span, span), bool)
        usable = np.zeros((span, span), bool)
        for row in mine:
            chip = chip_shards.decode(row, chipset)
            place = (slice(row["row"], row["row"] + 96), slice(row["col"], row["col"] + 96))
            held[place] += 1
            building[place] |= chip["target"][0].astype(bool) & chip["usable"]
            usable[place] |= chip["usable"]
        for row in mine:
            place = (slice(row["row"], row["row"] + 96), slice(row["col"], row["col"] + 96))
            np.testing.assert_array_equal(chip_shards.decode(row, chipset)["cover"], held[place])
        # summed over the tile's chips, the weights count every pixel once
        weights = sum(row["building_weight"] for row in mine)
        assert weights == pytest.approx(building.sum(), rel=1e-4)
        assert sum(row["usable_weight"] for row in mine) == pytest.approx(usable.sum(), rel=1e-4)
        assert sum(row["building_px"] for row in mine) > 2 * building.sum()  # overlapping


def test_the_same_config_writes_the_same_bytes(chipset_dir: Path, tmp_path: Path) -> None:
    again = _run(tmp_path / "again", "workers=2")
    first = json.loads((chipset_dir / "manifest.json").read_text())
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in first["shards"]]


def test_a_killed_run_resumes_to_the_same_shards(
    chipset_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from open_buildings.pipelines import chips_job

    out = tmp_path / "killed"
    config = _config(tmp_path / "cfg")
    args = [sys.executable, "-m", "open_buildings.commands.chips", config, "--out", str(out)]
    env = {**os.environ, "OPEN_BUILDINGS_KILL_AT": "shard:1"}
    killed = subprocess.run(args, env=env, capture_output=True, text=True)
    assert killed.returncode == -9
    assert not (out / "manifest.json").exists()
    assert len(list((out / ".work" / "tiles").rglob("*.parquet"))) == 2  # both tiles cut
    assert ob_chips.main(args[3:]) == 2  # not empty: --resume is needed

    def no_cutting(*_):
        raise AssertionError("a resumed run cuts no tile already cut")

    monkeypatch.setattr(chips_job.CutTileFn, "_cut", no_cutting)
    # the kept tiles were cut without context: resuming with it would mix two kinds of chips
    capsys.readouterr()
    assert ob_chips.main([*args[3:], "--resume", "-o", "chip.context=16"]) == 2
    assert "were cut with other chip than this config's" in capsys.readouterr().err
    assert ob_chips.main([*args[3:], "--resume"]) == 0
    first = json.loads((chipset_dir / "manifest.json").read_text())
    resumed = json.loads((out / "manifest.json").read_text())
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in first["shards"]]


def test_a_tile_that_fails_is_a_dead_letter_and_the_rest_is_written(tmp_path: Path, capsys) -> None:
    unlabelled = (
        f"unlabelled=[{{name: u, imagery: imagery/banepa, probabilities: {tmp_path / 'none'}}}]"
    )
    m = _run(tmp_path / "out", unlabelled)
    assert [d["tile_id"] for d in m["dead_letters"]] == ["39eb0f33"]
    assert "ob-infer --write-probabilities" in m["dead_letters"][0]["reason"]
    assert m["splits"]["train"]["chips"] > 0
    assert (tmp_path / "out" / ".work").exists()  # kept for --resume
    assert "1 tiles failed" in capsys.readouterr().out


def test_teacher_probabilities_become_chips(tmp_path: Path) -> None:
    from tests.training.test_split_and_teacher import _teacher_run

    _, teacher = _teacher_run(tmp_path)
    m = _run(
        tmp_path / "out",
        f"unlabelled=[{{name: u, imagery: imagery/banepa, probabilities: {teacher}}}]",
    )
    assert m["splits"]["unlabelled"]["chips"] > 0 and not m["dead_letters"]
    chipset = chip_shards.open_chipset(tmp_path / "out")
    shard = chipset.split("unlabelled")[0]
    row = pq.read_table(tmp_path / "out" / shard.name).to_pylist()[0]
    chip = chip_shards.decode(row, chipset)
    assert "target" not in chip and chip["teacher"].shape == (2, 128, 128)
    from open_buildings.pipelines.probabilities import probability_path, read_probabilities

    tile = geogrid.tile_from_id(row["tile_id"])
    probs, _ = read_probabilities(probability_path(str(teacher), row["tile_id"]), tile.grid)
    r, c = row["row"], row["col"]
    np.testing.assert_allclose(chip["teacher"], probs[:, r : r + 128, c : c + 128], atol=1e-3)


def test_damaged_or_unfinished_chips_are_refused(chipset_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(chipset_dir, copy)
    chipset = chip_shards.open_chipset(copy)
    shard = chipset.shards[0]
    data = bytearray((copy / shard.name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / shard.name).write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256"):
        chip_shards.ShardReader(chip_shards.open_chipset(copy)).column(shard, "buildings")
    (copy / shard.name).write_bytes(bytes(data[:-10]))
    with pytest.raises(ShardError, match="re-run ob-chips --resume"):
        chip_shards.open_chipset(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(
        json.dumps({**manifest, "format": "open-buildings-chips/1"})
    )
    with pytest.raises(ShardError, match="cut the chips again with this ob-chips"):
        chip_shards.open_chipset(copy)  # chips of an older version lack columns the stream reads
    (copy / "manifest.json").unlink()
    with pytest.raises(ShardError, match="not a finished ob-chips output"):
        chip_shards.open_chipset(copy)


def test_the_config_refuses_unknown_keys_and_a_dataflow_run_without_its_section() -> None:
    with pytest.raises(Exception, match="chip.strid"):
        load_config(ChipsConfig, None, [*BASE, "chip.strid=3"])
    with pytest.raises(Exception, match="needs a 'dataflow:' section"):
        load_config(ChipsConfig, None, [*BASE, "runner=dataflow"])
    dataflow = "dataflow={project: p, region: r, temp_location: gs://b/t, sdk_container_image: i}"
    with pytest.raises(Exception, match="give a gs:// folder"):
        load_config(ChipsConfig, None, [*BASE, "runner=dataflow", dataflow, "out=/tmp/x"])
    cfg = load_config(ChipsConfig, None, [*BASE, "runner=dataflow", dataflow, "out=gs://b/chips"])
    from open_buildings.pipelines.job import pipeline_options

    flags = pipeline_options(cfg).get_all_options()
    assert flags["runner"] == "DataflowRunner" and flags["project"] == "p"
