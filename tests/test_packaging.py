"""The wheel carries the sample data inside the package and installs no top-level geo/models."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_wheel_has_one_import_root(wheel_names: list[str]) -> None:
    roots = {
        name.split("/")[0] for name in wheel_names if not name.split("/")[0].endswith(".dist-info")
    }
    assert roots == {"open_buildings"}


def test_wheel_ships_the_sample_region_and_imagery(wheel_names: list[str]) -> None:
    for name in ("region.geojson", "items.json", "nairobi_a.tif", "nairobi_b.tif"):
        assert f"open_buildings/resources/geo/sample/{name}" in wheel_names


def test_wheel_ships_the_default_model(wheel_names: list[str]) -> None:
    for name in ("weights.safetensors", "weights.safetensors.sha256", "MODEL_CARD.md"):
        assert f"open_buildings/resources/models/default/{name}" in wheel_names
    for name in ("weights.onnx", "weights.onnx.sha256"):  # what the light install runs
        assert f"open_buildings/resources/models/default/{name}" in wheel_names


def test_wheel_ships_the_country_outlines(wheel_names: list[str]) -> None:
    for name in ("countries.parquet", "README.md"):
        assert f"open_buildings/resources/geo/countries/{name}" in wheel_names


def test_wheel_ships_the_maps_leaflet_with_its_licence(wheel_names: list[str]) -> None:
    for name in ("leaflet.js", "leaflet.css", "LICENSE"):
        assert f"open_buildings/resources/web/leaflet/{name}" in wheel_names


def test_wheel_has_no_test_data(wheel_names: list[str]) -> None:
    assert not [name for name in wheel_names if "tests/" in name]


def test_resource_lookup_finds_sample_region() -> None:
    from open_buildings.resources import resource

    assert resource("geo", "sample", "region.geojson").is_file()
    with pytest.raises(ValueError, match="unknown resource kind"):
        resource("weights")
