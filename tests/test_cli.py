"""The console scripts: ob-tiles on the sample, and the stubs that say which issue brings them."""

import importlib
from pathlib import Path

import pytest

from open_buildings.commands import calibrate as ob_calibrate
from open_buildings.commands import detect as ob_detect
from open_buildings.commands import download as ob_download
from open_buildings.commands import evaluate as ob_eval
from open_buildings.commands import evaluate_model as ob_eval_model
from open_buildings.commands import infer as ob_infer
from open_buildings.commands import map as ob_map
from open_buildings.commands import models as ob_models
from open_buildings.commands import tiles as ob_tiles
from open_buildings.commands import train as ob_train

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "geo" / "sample"
BAD = ROOT / "tests" / "data" / "regions" / "geojsonhint" / "bad"


def test_ob_tiles_counts_the_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert ob_tiles.main([str(SAMPLE / "region.geojson")]) == 0
    out = capsys.readouterr().out
    assert "2 tiles at S2 level 14" in out
    assert "0.068 km2" in out


def test_ob_tiles_lists_ids_and_reads_imagery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = tmp_path / "tiles.txt"
    argv = [
        str(SAMPLE / "region.geojson"),
        "--list",
        str(ids),
        "--imagery",
        str(SAMPLE / "items.json"),
    ]
    assert ob_tiles.main(argv) == 0
    assert ids.read_text().split() == ["182f13a9", "182f13ab"]
    out = capsys.readouterr().out
    assert "tile 182f13a9 (EPSG:32737, 1326x1009 px at 0.5 m): imagery covers 12.0%" in out
    # never overwrites an existing list
    assert ob_tiles.main(argv) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad-json.geojson", "invalid JSON at line 3, column 5"),
        ("point.geojson", "a Point is not an area"),
        ("different-first-last.geojson", "not closed"),
    ],
)
def test_ob_tiles_bad_region_is_a_clear_error(
    name: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ob_tiles.main([str(BAD / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ob-tiles: error: ") and message in err and name in err


COMMANDS = [
    ob_infer.main,
    ob_train.main,
    ob_eval.main,
    ob_download.main,
    ob_tiles.main,
    ob_detect.main,
    ob_calibrate.main,
    ob_eval_model.main,
    ob_models.main,
    ob_map.main,
]


@pytest.mark.parametrize("main", COMMANDS)
def test_every_command_has_help(main, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ob-" in out and "%%" not in out


@pytest.mark.parametrize("main", COMMANDS)
def test_every_command_has_version(main, capsys: pytest.CaptureFixture[str]) -> None:
    from open_buildings import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("ob-") and __version__ in out
    if main is ob_infer.main:  # and the model ob-infer uses when none is given
        digest = (ROOT / "models" / "default" / "weights.safetensors.sha256").read_text().split()[0]
        assert f"default model sha256 {digest}" in " ".join(out.split())


def test_ob_infer_format_is_checked_with_a_plain_message(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ob_infer.main(["--format", "geojson"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "geojson is not a shard format ob-infer writes; choose csv, parquet" in err
    assert "postprocess" not in err and "validation error" not in err


def test_console_scripts_point_at_real_functions() -> None:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) >= {
        "ob-infer",
        "ob-train",
        "ob-eval",
        "ob-download",
        "ob-tiles",
        "ob-models",
        "ob-detect",
        "ob-calibrate",
        "ob-eval-model",
        "ob-finetune",
        "ob-vtab",
        "ob-pretrain",
        "ob-search",
        "ob-change",
        "ob-map",
    }
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert module.startswith("open_buildings.commands.") and name == "main"
        assert callable(getattr(importlib.import_module(module), name))


def test_ob_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert ob_models.main([]) == 0
    out = capsys.readouterr().out
    for name in ("unet_tiny", "unet_resnet18", "unet_efficientnet_lite0", "unet_mit_b0"):
        assert name in out
    assert "building,interior" in out
