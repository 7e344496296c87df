"""The Beam inference pipeline end to end, its faults, and the Dataflow graph (built, not run)."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from conftest import (
    ROOT,
    SAMPLE,
    corrupt_mosaic,
    job_config,
    manifest_files,
    output_digests,
    sha256_of,
    write_region,
)

from open_buildings.config import load_config
from open_buildings.geo import grid
from open_buildings.geo.imagery import open_imagery
from open_buildings.pipelines import device_decode, job, sinks, transforms
from open_buildings.pipelines.config import InferConfig


def test_end_to_end_rows_match_the_manifest(clean_run: dict) -> None:
    out: Path = clean_run["out"]
    entries = manifest_files(out)
    assert [e["name"] for e in entries] == ["182f_buildings.csv.gz", "182f_buildings.parquet"]
    for entry in entries:
        path = out / entry["name"]
        assert entry["sha256"] == sha256_of(path) and entry["bytes"] == path.stat().st_size
    csv_rows = len(pd.read_csv(out / "182f_buildings.csv.gz"))
    parquet = gpd.read_parquet(out / "182f_buildings.parquet")
    assert [e["rows"] for e in entries] == [csv_rows, len(parquet)]
    assert csv_rows == len(parquet) == clean_run["counters"]["buildings"] > 0
    assert not (out / sinks.DEAD_LETTER_NAME).exists()
    counters = clean_run["counters"]
    assert counters["tiles_read"] == 4 and counters["tiles_failed"] == 0
    assert counters["m2_covered"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["sha256"] and len(manifest["model"]["sha256"]) == 64


def test_end_to_end_every_building_is_owned_by_exactly_one_tile(clean_run: dict) -> None:
    frame = gpd.read_parquet(clean_run["out"] / "182f_buildings.parquet")
    lon, lat = frame["longitude"].to_numpy(), frame["latitude"].to_numpy()
    spec = grid.GridSpec(level=16)
    owners = np.zeros(len(frame), dtype=int)
    for tile_id in ["182f13a95", "182f13a97", "182f13abd", "182f13abf"]:
        owners += grid.Tile(tile_id, spec).owns(lon, lat)
    assert (owners == 1).all()
    assert not frame.geometry.to_wkb().duplicated().any()


def test_a_bundle_that_fails_once_under_a_retrying_runner_gives_identical_output(
    clean_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beam's BundleBasedDirectRunner retries a failed bundle (up to 4 attempts), like Dataflow.

    The shard writer fails on its first attempt *after* writing its files (the worst moment).
    The retry rewrites the same bytes through an atomic rename, so the output is identical to the
    clean run's.
    """
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

    attempts = []
    grouped = []
    real = sinks.write_shard

    def flaky(token, parts, *args, **kwargs):
        parts = list(parts)
        grouped.extend(parts)
        records = real(token, parts, *args, **kwargs)
        attempts.append(len(records))
        if len(attempts) == 1:
            raise RuntimeError("worker lost after writing (simulated)")
        return records

    monkeypatch.setattr(sinks, "write_shard", flaky)
    out = tmp_path / "out"
    config = load_config(InferConfig, clean_run["config"], [f"output={out}"])
    p = beam.Pipeline(runner=BundleBasedDirectRunner())
    job.build(p, config)
    p.run().wait_until_finish()
    assert len(attempts) == 2
    assert output_digests(out) == output_digests(clean_run["out"])
    assert manifest_files(out) == manifest_files(clean_run["out"])
    # without a work folder each tile's footprints waited in a file under the output, and the
    # shards' GroupByKey carried only those files' names; they are gone once the manifest is
    parts = out / sinks.PARTS_FOLDER
    assert grouped and all(p.rows is None and Path(p.path).parent == parts for p in grouped)
    assert not parts.exists()


def test_a_corrupt_tile_goes_to_the_dead_letter_output_and_the_rest_completes(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    imagery = corrupt_mosaic(tmp_path / "mosaic")
    region = write_region(tmp_path / "region.geojson", (36.9065, -1.3065, 36.9075, -1.3055))
    spec = grid.GridSpec(level=16)
    source = open_imagery(imagery)
    failing, good = set(), set()
    for tile in grid.cover(
        gpd.read_file(region).geometry.iloc[0], spec
    ):  # what each tile does when read directly
        try:
            source.read(tile.grid)
            good.add(tile.id)
        except Exception:
            failing.add(tile.id)
    assert failing and good

    out = tmp_path / "out"
    config = job_config(tmp_path, region=region, model=tiny_checkpoint, output=out, imagery=imagery)
    result = job.run(["--config", str(config)])
    dead = sinks.load_dead_letters(out / sinks.DEAD_LETTER_NAME)
    assert {d.tile_id for d in dead} == failing
    assert all(d.stage == "read" and "could not be read" in d.reason for d in dead)
    counters = job.counters(result)
    assert counters["tiles_failed"] == len(failing) and counters["tiles_read"] == len(good)
    frame = gpd.read_parquet(out / "182f_buildings.parquet")
    owners = np.zeros(len(frame), dtype=bool)
    for tile_id in good:
        owners |= grid.Tile(tile_id, spec).owns(frame["longitude"], frame["latitude"])
    assert len(frame) > 0 and owners.all()  # the good tiles' buildings, and only theirs
    assert json.loads((out / "manifest.json").read_text())["total_rows"] == len(frame)


def test_tiles_without_imagery_are_counted_and_skipped(tiny_checkpoint, tmp_path) -> None:
    region = write_region(tmp_path / "r.geojson", (36.9100, -1.3058, 36.9106, -1.3052))
    out = tmp_path / "out"
    config = job_config(tmp_path, region=region, model=tiny_checkpoint, output=out)
    counters = job.counters(job.run(["--config", str(config)]))
    assert counters["tiles_empty"] == counters["tiles_read"] > 0
    assert counters["buildings"] == 0
    assert json.loads((out / "manifest.json").read_text())["files"] == []


@pytest.mark.parametrize("name", ["local.yaml", "example-dataflow.yaml", "africa.yaml"])
def test_shipped_job_configs_parse(name: str) -> None:
    config = load_config(InferConfig, ROOT / "pipelines" / name)
    assert config.shard_level <= config.grid.tile_level
    if name != "local.yaml":
        assert config.runner == "dataflow" and config.runtime.device == "cuda"
        assert config.dataflow.gpu_type and config.dataflow.gpu_count >= 1


def test_a_process_per_vcpu_on_a_gpu_worker_needs_the_shared_model() -> None:
    from open_buildings.errors import ConfigError

    africa = ROOT / "pipelines" / "africa.yaml"
    with pytest.raises(ConfigError, match="share_model_across_processes: true"):
        load_config(InferConfig, africa, ["runtime.share_model_across_processes=false"])
    one_process = load_config(
        InferConfig,
        africa,
        ["runtime.share_model_across_processes=false", "dataflow.sdk_process_per_vcpu=false"],
    )
    assert not one_process.runtime.share_model_across_processes


def test_a_typo_in_a_config_key_is_an_error(tmp_path: Path) -> None:
    from open_buildings.errors import ConfigError

    path = tmp_path / "job.yaml"
    path.write_text("output: out\nmax_batch_sise: 8\n")
    with pytest.raises(ConfigError, match="max_batch_sise: unknown key"):
        load_config(InferConfig, path)


def test_the_dataflow_graph_builds_with_the_africa_options_without_submitting(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from open_buildings.pipelines import region_input

    uploads: list[str] = []  # launching writes the region beside the output: recorded here
    monkeypatch.setattr(sinks, "upload", lambda local, url: uploads.append(url))
    config = load_config(
        InferConfig,
        ROOT / "pipelines" / "africa.yaml",
        [f"region={SAMPLE / 'region.geojson'}", f"model={tiny_checkpoint}"],  # local: no network
    )
    dataflow = config.dataflow.model_copy(
        update={
            "project": "my-project-123",
            "temp_location": "gs://my-bucket/tmp",
            "staging_location": "gs://my-bucket/staging",
        }
    )
    config = config.model_copy(update={"dataflow": dataflow})
    # dry_run: Beam's check of the buckets' soft-delete policy would call GCS (and retry)
    p = job.make_pipeline(config, ["--dry_run=True"])
    options = p.options.get_all_options()
    assert options["runner"] == "DataflowRunner"
    assert options["machine_type"] == "n1-standard-16"
    assert "no_use_multiple_sdk_containers" not in options["experiments"]  # a process per vCPU
    assert options["dataflow_service_options"] == [
        "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
    ]
    assert options["sdk_container_image"].endswith("/open-buildings/worker:0.1.0")
    assert "use_runner_v2" in options["experiments"]
    assert type(p.runner).__name__ == "DataflowRunner"
    job.build(p, config)
    assert uploads == [f"{config.output.rstrip('/')}/{region_input.REGION_FILE}"]
    proto = p.to_runner_api()
    labels = {t.unique_name for t in proto.components.transforms.values()}
    for stage in [
        "CoverTiles",
        "ReadImagery",
        "RunModel",
        "RunModel/RunInference",
        "Polygonize",
        "WriteShards/GroupByShard",
        "WriteManifest",
    ]:
        assert stage in labels
    handler = next(
        t for t in p.transforms_stack[0].parts if t.full_label == "RunModel"
    ).transform._handler._unkeyed
    assert handler._config.device == "cuda" and handler.batch_elements_kwargs() == {
        "min_batch_size": 2,
        "max_batch_size": 4,
    }
    assert handler.share_model_across_processes()  # Beam keeps one model per worker
    assert device_decode.decodes_on_device(handler._config)  # the GPU decodes its own logits
    assert transforms.COUNTERS[:3] == ("tiles_read", "tiles_empty", "tiles_failed")
