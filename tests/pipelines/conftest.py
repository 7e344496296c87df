"""Shared fixtures for the pipeline tests: a tiny real checkpoint, small regions, job configs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import rasterio
import shapely
import yaml
from affine import Affine

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "geo" / "sample"
LABELS = ROOT / "tests" / "data" / "labels" / "nairobi_ke.geojson"
CORRUPT = ROOT / "tests" / "data" / "imagery" / "bad_inputs" / "corrupt.tif"
# ~90 m x 100 m over nairobi_a.tif, across the border of the level-14 tiles 182f13a9 / 182f13ab;
# at tile level 16 it touches a handful of small tiles, so a run takes seconds.
SMALL_BOX = (36.9070, -1.3058, 36.9078, -1.3049)
TEST_TILE_LEVEL = 16


def write_region(path: Path, bounds: tuple[float, float, float, float]) -> Path:
    """Write a one-polygon GeoJSON region."""
    feature = {
        "type": "Feature",
        "properties": {"name": path.stem},
        "geometry": json.loads(shapely.to_geojson(shapely.box(*bounds))),
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def sha256_of(path: Path) -> str:
    """Return a file's sha256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_digests(folder: Path) -> dict[str, str]:
    """sha256 of every shard file (and the dead-letter list) in an output folder."""
    return {
        p.name: sha256_of(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "manifest.json"
    }


def manifest_files(folder: Path) -> list[dict]:
    """The manifest's file entries (everything but the creation time)."""
    return json.loads((folder / "manifest.json").read_text())["files"]


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the ONNX Runtime conversions the tests make out of the user's cache folder."""
    import os

    folder = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("OPEN_BUILDINGS_CACHE")
    os.environ["OPEN_BUILDINGS_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("OPEN_BUILDINGS_CACHE", None)
    else:
        os.environ["OPEN_BUILDINGS_CACHE"] = previous


class StopBuildError(Exception):
    """Raised by :func:`ob_infer_configs` in place of building the pipeline."""


@pytest.fixture
def ob_infer_configs(monkeypatch: pytest.MonkeyPatch) -> list:
    """The configs ``ob-infer`` would build its pipeline from; each call then raises."""
    from open_buildings.commands import infer as ob_infer

    seen: list = []

    def capture(p: object, config: object, **kwargs: object) -> None:
        seen.append(config)
        raise StopBuildError

    monkeypatch.setattr(ob_infer, "build", capture)
    return seen


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``unet_tiny`` saved with ``save_checkpoint`` (fixed seed): real plumbing."""
    import torch

    from open_buildings.models.checkpoint import save_checkpoint
    from open_buildings.models.registry import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "unet_tiny.safetensors"
    save_checkpoint(build_model("unet_tiny"), path)
    return path


@pytest.fixture(scope="session")
def small_region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small test region as a GeoJSON file."""
    return write_region(tmp_path_factory.mktemp("region") / "small.geojson", SMALL_BOX)


def job_config(
    folder: Path, *, region: Path, model: Path, output: Path, imagery: Path | None = None, **extra
) -> Path:
    """Write a local YAML job config for the tests and return its path."""
    data = {
        "region": str(region),
        "imagery": str(imagery or SAMPLE / "items.json"),
        "model": str(model),
        "output": str(output),
        "grid": {"tile_level": TEST_TILE_LEVEL},
        "shard_level": 6,
        "runtime": {"max_batch_size": 4},
        "runner": "direct",
        "workers": 1,
        **extra,
    }
    path = folder / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def clean_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, small_region: Path
) -> dict:
    """One uninterrupted pipeline run over the small region; other tests compare against it."""
    from open_buildings.pipelines import job

    folder = tmp_path_factory.mktemp("clean")
    out = folder / "out"
    config = job_config(folder, region=small_region, model=tiny_checkpoint, output=out)
    result = job.run(["--config", str(config)])
    return {"out": out, "config": config, "result": result, "counters": job.counters(result)}


def corrupt_mosaic(folder: Path) -> Path:
    """A folder mosaic: rasterio's corrupt.tif, moved over the south of nairobi_a, wins there."""
    folder.mkdir()
    corrupt = folder / "0_corrupt.tif"
    shutil.copy(CORRUPT, corrupt)
    with rasterio.open(SAMPLE / "nairobi_a.tif") as good:
        t = good.transform
    with rasterio.open(corrupt, "r+") as ds:  # only the header changes; the tiles stay corrupt
        ds.transform = Affine(t.a, 0.0, t.c, 0.0, t.e, t.f - 512 * abs(t.e))
    shutil.copy(SAMPLE / "nairobi_a.tif", folder / "1_nairobi_a.tif")
    return folder
