"""The one config loader: strict keys, -o overrides, and paths relative to the YAML file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from open_buildings.config import ConfigPath, StrictModel, apply_overrides, load_config
from open_buildings.errors import ConfigError
from open_buildings.pipelines.config import InferConfig
from open_buildings.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_relative_paths_are_resolved_against_the_yaml_file(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "job.yaml").write_text(
        "region: regions/r.geojson\nimagery: ../imagery/items.json\nmodel: ckpt/w.safetensors\n"
        "output: out\n"
    )
    monkeypatch.chdir(tmp_path.parent)  # the working directory does not matter
    config = load_config(InferConfig, folder / "job.yaml")
    assert config.region == str(folder / "regions" / "r.geojson")
    assert config.imagery == str(tmp_path / "imagery" / "items.json")
    assert config.model == str(folder / "ckpt" / "w.safetensors")
    assert config.output == str(folder / "out")


def test_urls_absolute_paths_and_zoo_names_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "region: gs://bucket/r.geojson\nimagery: /data/items.json\nmodel: default\noutput: gs://b/o\n"
    )
    config = load_config(InferConfig, path)
    assert (config.region, config.imagery, config.model, config.output) == (
        "gs://bucket/r.geojson",
        "/data/items.json",
        "default",
        "gs://b/o",
    )


def test_overrides_are_nested_and_typed_and_read_as_if_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("output: out\nruntime: {device: cpu}\n")
    config = load_config(
        InferConfig,
        path,
        ["runtime.max_batch_size=2", "grid.margin_m=16", "formats=[csv]", "region=r.geojson"],
    )
    assert config.runtime.max_batch_size == 2 and config.runtime.device == "cpu"
    assert config.grid.margin_m == 16.0 and config.formats == ("csv",)
    assert config.region == str(tmp_path / "r.geojson")


def test_a_typo_names_the_key_and_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("output: out\nruntime: {max_batch_sise: 8}\n")
    with pytest.raises(ConfigError, match=r"runtime\.max_batch_sise: unknown key") as info:
        load_config(InferConfig, path)
    assert "Valid keys" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("- a\n- b\n", "must hold a mapping"), ("a: [1,\n", "not valid YAML")],
)
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(InferConfig, path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(InferConfig, tmp_path / "missing.yaml")


def test_an_override_without_equals_is_refused() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["steps"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


def test_without_a_file_relative_paths_stay_relative() -> None:
    class Paths(StrictModel):
        where: ConfigPath

    assert load_config(Paths, None, ["where=data/x.tif"]).where == "data/x.tif"


def test_training_data_paths_follow_data_root_which_follows_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "t.yaml").write_text(
        "data_root: ../data\n"
        "train: [{name: a, imagery: imagery/a, labels: labels/a.geojson}]\n"
        "self_training: {unlabelled: [{name: u, imagery: imagery/u, probabilities: runs/t}]}\n"
        "init_from: imagenet\n"
        "out: runs/x\n"
    )
    cfg = load_config(TrainConfig, folder / "t.yaml")
    data = tmp_path / "data"
    assert cfg.data_root == str(data)
    assert cfg.train[0].imagery == str(data / "imagery" / "a")
    assert cfg.train[0].labels == str(data / "labels" / "a.geojson")
    # the teacher's ob-infer output is a run, found from the file; its imagery is data
    assert cfg.self_training.unlabelled[0].probabilities == str(folder / "runs" / "t")
    assert cfg.self_training.unlabelled[0].imagery == str(data / "imagery" / "u")
    assert cfg.init_from == "imagenet"
    assert cfg.out == str(folder / "runs" / "x")


def test_without_data_root_areas_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("train: [{name: a, imagery: a.tif}]\ninit_from: w.npz\n")
    cfg = load_config(TrainConfig, tmp_path / "t.yaml")
    assert cfg.train[0].imagery == str(tmp_path / "a.tif")
    assert cfg.init_from == str(tmp_path / "w.npz")


def test_no_default_points_at_a_developer_folder() -> None:
    assert TrainConfig.model_fields["data_root"].default is None
    assert TrainConfig.model_fields["bf16"].default == "auto"  # on only where bf16 is native
    assert InferConfig.model_fields["runtime"].default.bf16 is False


@pytest.mark.parametrize(
    "name",
    [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "pipelines" / "train").rglob("*.yaml"))]
    + ["models/default/config.yaml"],
)
def test_shipped_training_configs_load_and_find_the_shared_data_from_their_folder(
    name: str,
) -> None:
    cfg = load_config(TrainConfig, ROOT / name)
    shared = os.path.normpath(ROOT.parent / "shared" / "data")
    assert cfg.data_root == shared
    assert all(a.imagery.startswith(shared) for a in cfg.train)
    assert Path(cfg.out).is_relative_to(ROOT / "runs")
