"""The decode on the model's device gives the CPU decode's instances (issue #16, GPU workers).

Run here on the CPU build of the code path (PyTorch on the CPU); on a GPU the same tensors
live on the device. Real inputs: the shipped model on the embedded sample's tiles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from open_buildings.commands import evaluate_model as ob_eval_model
from open_buildings.commands.infer import main as ob_infer
from open_buildings.evaluation.evaluate import evaluate_files
from open_buildings.geo import grid, imagery, regions
from open_buildings.models import heads
from open_buildings.models.decode_torch import decode_on_device
from open_buildings.pipelines import device_decode, domain, runtime
from open_buildings.pipelines.config import InferConfig, RuntimeConfig
from open_buildings.pipelines.forward import NumpyForward, run_on_imagery
from tests.pipelines.conftest import output_digests

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "geo" / "sample"


@pytest.fixture(scope="module")
def torch_model() -> object:
    """The shipped default model in PyTorch on the CPU."""
    model, backend, _ = runtime.load_model(
        runtime.resolve_model("default"), RuntimeConfig(backend="torch")
    )
    assert backend.startswith("torch")
    return model


@pytest.fixture(scope="module")
def tiles() -> list[tuple[np.ndarray, np.ndarray]]:
    """``(rgb, valid)`` of each sample tile with imagery."""
    source = imagery.open_imagery(str(SAMPLE / "items.json"))
    out = []
    for tile in grid.cover(regions.read_region(SAMPLE / "region.geojson").geometry):
        image = source.read(tile.grid)
        if not image.empty:
            out.append((image.rgb, image.valid))
    assert len(out) == 2
    return out


@pytest.fixture(scope="module")
def logits(torch_model: object, tiles: list) -> list[np.ndarray]:
    """The model's logits of each tile, as the host decode gets them."""
    return run_on_imagery(torch_model, tiles)


def test_real_tiles_decode_to_the_cpu_instances(logits: list[np.ndarray]) -> None:
    exact = total = 0
    for tile_logits in logits:
        want, want_conf = heads.decode(tile_logits)
        [(got, conf, _)] = decode_on_device(torch.from_numpy(tile_logits)[None])
        assert got.dtype == np.uint16  # a quarter of the logits' bytes cross to the host
        got = got.astype(np.int32)
        n = int(want.max())
        assert int(got.max()) == n  # same instances, numbered in the same order
        building = want > 0
        assert np.array_equal(got > 0, building)
        # the watershed's borders between touching seeds may move by a pixel: 21 of 160,799
        # building pixels on these two tiles
        assert np.count_nonzero(got != want) <= 0.001 * np.count_nonzero(building)
        same = np.array([np.array_equal(want == i, got == i) for i in range(1, n + 1)], dtype=bool)
        np.testing.assert_allclose(conf[1:][same], want_conf[1:][same], rtol=0, atol=1e-6)
        exact, total = exact + int(same.sum()), total + n
    assert total > 300
    assert exact >= 0.95 * total  # 315 of 325 here


def test_touching_buildings_split_as_on_the_cpu() -> None:
    x = np.full((2, 12, 20), -5.0, dtype=np.float32)
    x[0, 2:10, 2:18] = 5.0  # one building blob with two interiors ...
    x[1, 4:8, 3:6] = 5.0
    x[1, 4:8, 14:17] = 5.0
    x[0, 0, 0:9] = 5.0  # ... a seedless strip, numbered after the seeds ...
    x[0, 11, 19] = 5.0  # ... and a speck under min_pixels
    want, want_conf = heads.decode(x)
    [(got, conf, share)] = decode_on_device(torch.from_numpy(x)[None])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(conf, want_conf, atol=1e-6)
    assert set(np.unique(got)) == {0, 1, 2, 3}
    assert share == pytest.approx((8 * 16 + 9 + 1) / (12 * 20))


def test_a_batch_decodes_each_tile_as_alone(logits: list[np.ndarray]) -> None:
    x = logits[0][:, :512, :512]
    y = logits[1][:, 300:812, 300:812]
    batch = decode_on_device(torch.from_numpy(np.stack([x, y])))
    for alone, together in zip((x, y), batch, strict=True):
        single = torch.from_numpy(np.ascontiguousarray(alone))[None]
        [(labels, conf, share)] = decode_on_device(single)
        np.testing.assert_array_equal(together[0], labels)
        np.testing.assert_array_equal(together[1], conf)
        assert together[2] == share


def test_run_decoded_matches_the_host_path(
    torch_model: object, tiles: list, logits: list[np.ndarray]
) -> None:
    decoded = device_decode.run_decoded(torch_model, tiles)
    shared = NumpyForward(torch_model).run_decoded(tiles, 64)
    for (rgb, valid), tile_logits, got, other in zip(tiles, logits, decoded, shared, strict=True):
        np.testing.assert_array_equal(got.labels, other.labels)
        want, _ = heads.decode(tile_logits)
        assert int(got.labels.max()) == int(want.max())
        assert np.count_nonzero(got.labels != want) <= 0.001 * np.count_nonzero(want)
        # the domain check reads the same building share from either form
        assert domain.tile_stats(rgb, valid, got) == domain.tile_stats(rgb, valid, tile_logits)


def test_decodes_on_device_where_asked() -> None:
    cuda = RuntimeConfig(device="cuda")
    job = InferConfig(output="o", runtime=cuda)
    assert device_decode.job_runtime(job).decode == "device"
    probabilities = job.model_copy(update={"write_probabilities": True})
    assert device_decode.job_runtime(probabilities).decode == "host"
    assert not device_decode.decodes_on_device(RuntimeConfig())
    assert device_decode.decodes_on_device(RuntimeConfig(device="cuda"))
    assert not device_decode.decodes_on_device(RuntimeConfig(device="cuda", tta=True))
    assert not device_decode.decodes_on_device(RuntimeConfig(device="cuda", decode="host"))
    assert device_decode.decodes_on_device(RuntimeConfig(decode="device"))


def test_ob_infer_decoding_on_the_device_writes_the_host_footprints(tmp_path: Path) -> None:
    host, dev = tmp_path / "host", tmp_path / "device"
    assert ob_infer(["--backend", "torch", "--out", str(host), "--no-progress"]) == 0
    argv = ["--backend", "torch", "-o", "runtime.decode=device", "--out", str(dev)]
    assert ob_infer([*argv, "--no-progress"]) == 0
    import geopandas as gpd

    a = gpd.read_parquet(next(host.glob("*.parquet")))
    b = gpd.read_parquet(next(dev.glob("*.parquet")))
    assert len(a) == len(b) > 40
    same = sum(any(g.equals_exact(h, 1e-9) for h in b.geometry) for g in a.geometry)
    assert same >= len(a) - 3  # 56 of 58: two watershed borders moved by a pixel
    manifest = json.loads((dev / "manifest.json").read_text())
    assert manifest["total_rows"] == len(b) and manifest["settings"]["decode"] == "device"
    assert json.loads((host / "manifest.json").read_text())["settings"]["decode"] == "host"
    # ob-eval-model passes --decode to ob-infer: the same F1 as the host-decoded footprints
    labels = ROOT / "tests/data/labels/nairobi_ke.geojson"
    region = ROOT / "geo/sample/region.geojson"
    figures = tmp_path / "figures.json"
    argv = ["default", "--imagery", str(SAMPLE / "items.json"), "--truth", str(labels)]
    argv += ["--region", str(region), "--backend", "torch", "--decode", "device"]
    assert ob_eval_model.main([*argv, "--out", str(figures)]) == 0
    got = json.loads(figures.read_text())
    assert got["infer_args"] == ["-o", "runtime.decode=device"]
    scored = evaluate_files(str(host), str(labels), region_path=str(region), by_centroid=True)
    assert abs(got["default_output"]["f1"] - scored.f1.total.f1) <= 0.01
    assert set(output_digests(host)) == set(output_digests(dev))
    # two processes sharing one model (the GPU workers' setting) decode through Beam's proxy
    shared = tmp_path / "shared"
    argv = ["--backend", "torch", "-o", "runtime.decode=device", "--workers", "2"]
    argv += ["-o", "runtime.share_model_across_processes=true", "--out", str(shared)]
    assert ob_infer([*argv, "--no-progress"]) == 0
    assert output_digests(shared) == output_digests(dev)


def test_device_decode_refuses_what_needs_logits_or_pytorch(tmp_path: Path) -> None:
    out = str(tmp_path / "o")
    probs = ["-o", "runtime.decode=device", "-o", "write_probabilities=true", "--out", out]
    assert ob_infer([*probs, "--no-progress"]) == 2
    onnx = ["--backend", "onnxruntime", "-o", "runtime.decode=device", "--out", out]
    assert ob_infer([*onnx, "--no-progress"]) == 2
