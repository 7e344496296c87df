"""The console scripts: ob-tiles on the sample, and the stubs that say which issue brings them."""

from pathlib import Path

import pytest

from open_buildings import cli

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "geo" / "sample"
BAD = ROOT / "tests" / "data" / "regions" / "geojsonhint" / "bad"


def test_ob_tiles_counts_the_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.tiles_main([str(SAMPLE / "region.geojson")]) == 0
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
    assert cli.tiles_main(argv) == 0
    assert ids.read_text().split() == ["182f13a9", "182f13ab"]
    out = capsys.readouterr().out
    assert "tile 182f13a9 (EPSG:32737, 1326x1009 px at 0.5 m): imagery covers 12.0%" in out
    # never overwrites an existing list
    assert cli.tiles_main(argv) == 2
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
    assert cli.tiles_main([str(BAD / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ob-tiles: error: ") and message in err and name in err


@pytest.mark.parametrize(
    "main",
    [
        cli.infer_main,
        cli.train_main,
        cli.eval_main,
        cli.download_main,
        cli.tiles_main,
        cli.detect_main,
    ],
)
def test_every_command_has_help(main, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: ob-" in capsys.readouterr().out


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
    }
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert module == "open_buildings.cli" and callable(getattr(cli, name))


def test_ob_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.models_main([]) == 0
    out = capsys.readouterr().out
    for name in ("unet_tiny", "unet_resnet18", "unet_efficientnet_lite0", "unet_mit_b0"):
        assert name in out
    assert "building,interior" in out
