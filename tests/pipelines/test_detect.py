"""ob-detect on the Nairobi sample (real imagery and OSM labels) with a tiny random OWL-ViT.

A random detector finds nothing real, so these tests assert that the pipeline runs end to end
and writes what it says; the box-AP function is checked on the real labels with boxes whose AP
is known (the labels themselves: 1; the labels shifted by a fifth of their width: IoU 2/3).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from safetensors.torch import save_file

from open_buildings.commands.detect import main as detect_main
from open_buildings.errors import CheckpointError
from open_buildings.evaluation.boxes import evaluate_boxes
from open_buildings.evaluation.io import metric_crs, read_instances, to_crs
from open_buildings.geo import grid
from open_buildings.geo.imagery import open_imagery
from open_buildings.models.convert.owlvit import load_detector, load_queries
from open_buildings.models.owlvit import OWLVIT_TINY
from open_buildings.models.owlvit_detector import DetectorConfig, OwlViTDetector
from open_buildings.models.owlvit_windows import DetectOptions, detect_pixels
from open_buildings.pipelines import detect
from open_buildings.pipelines.detect import example_query
from tests.pipelines.conftest import (
    LABELS,
    SAMPLE,
    SMALL_BOX,
    TEST_TILE_LEVEL,
    corrupt_mosaic,
    write_region,
)

V = "owlvit.vision_model."
QUERY_DIM = 16


def hf_layout(det: OwlViTDetector) -> dict[str, torch.Tensor]:
    """Our detector's weights under the Hugging Face OwlViTForObjectDetection key names."""
    sd = {k: v.detach().clone() for k, v in det.state_dict().items()}
    out = {
        f"{V}embeddings.class_embedding": sd["encoder.vit.cls_token"].reshape(-1),
        f"{V}embeddings.patch_embedding.weight": sd["encoder.vit.patch_embed.weight"],
        f"{V}embeddings.position_embedding.weight": sd["encoder.vit.pos_embed"][0],
        "owlvit.text_projection.weight": torch.zeros(QUERY_DIM, QUERY_DIM),  # unused
    }
    for ours, theirs in (("norm_pre", "pre_layernorm"), ("norm", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"{V}{theirs}.{p}"] = sd[f"encoder.vit.{ours}.{p}"]
    for i in range(len(det.encoder.vit.blocks)):
        src, dst = f"encoder.vit.blocks.{i}.", f"{V}encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = sd[f"{src}attn.qkv.{p}"].chunk(3)
            out.update({f"{dst}self_attn.{n}_proj.{p}": t for n, t in zip("qkv", (q, k, v))})
            out[f"{dst}self_attn.out_proj.{p}"] = sd[f"{src}attn.proj.{p}"]
            out[f"{dst}layer_norm1.{p}"] = sd[f"{src}norm1.{p}"]
            out[f"{dst}layer_norm2.{p}"] = sd[f"{src}norm2.{p}"]
            out[f"{dst}mlp.fc1.{p}"] = sd[f"{src}mlp.fc1.{p}"]
            out[f"{dst}mlp.fc2.{p}"] = sd[f"{src}mlp.fc2.{p}"]
    out["layer_norm.weight"] = sd["encoder.layer_norm.weight"]
    out["layer_norm.bias"] = sd["encoder.layer_norm.bias"]
    out.update({k: v for k, v in sd.items() if k.startswith(("box_head.", "class_head."))})
    return {k: v.contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OwlViTDetector]:
    """A random tiny detector written in the Hugging Face layout (with a config.json)."""
    folder = tmp_path_factory.mktemp("owlvit_ckpt")
    torch.manual_seed(0)
    det = OwlViTDetector(DetectorConfig(vit=OWLVIT_TINY, query_dim=QUERY_DIM)).eval()
    with torch.no_grad():
        det.encoder.vit.patch_embed.bias.zero_()  # HF's patch embedding has no bias
    save_file(hf_layout(det), str(folder / "model.safetensors"))
    config = {"vision_config": {"num_attention_heads": OWLVIT_TINY.heads, "layer_norm_eps": 1e-5}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, det


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("queries") / "queries.npy"
    np.save(path, np.random.default_rng(0).normal(size=(2, QUERY_DIM)).astype(np.float32))
    return path


def test_checkpoint_round_trip(checkpoint: tuple[Path, OwlViTDetector]) -> None:
    folder, det = checkpoint
    loaded, report = load_detector(folder)
    assert report == {"loaded": len(det.state_dict()), "unused": 1}
    x, q = torch.randn(1, 3, 48, 64), torch.randn(3, QUERY_DIM)
    with torch.no_grad():
        a, b = det(x, q), loaded(x, q)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.boxes, b.boxes)


def test_load_queries(tmp_path: Path) -> None:
    raw = np.array([[3.0, 4.0], [0.0, 2.0]], dtype=np.float32)
    np.save(tmp_path / "q.npy", raw)
    np.testing.assert_allclose(
        load_queries(tmp_path / "q.npy"), [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6
    )
    save_file({"queries": torch.tensor([1.0, 0.0, 0.0])}, str(tmp_path / "q.safetensors"))
    assert load_queries(tmp_path / "q.safetensors").tolist() == [[1.0, 0.0, 0.0]]
    save_file({"a": torch.ones(2), "b": torch.ones(2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(CheckpointError, match="name the query embeddings 'queries'"):
        load_queries(tmp_path / "two.safetensors")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="cannot read|not numbers"):
        load_queries(tmp_path / "obj.npy")
    np.save(tmp_path / "zero.npy", np.zeros((1, 4), np.float32))
    with pytest.raises(CheckpointError, match="all-zero"):
        load_queries(tmp_path / "zero.npy")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_queries(tmp_path / "missing.npy")


def test_windows_cover_the_image_and_merge(checkpoint: tuple[Path, OwlViTDetector]) -> None:
    _, det = checkpoint
    rgb = np.random.default_rng(1).integers(0, 256, (3, 100, 150), dtype=np.uint8)
    q = torch.randn(2, QUERY_DIM)
    options = DetectOptions(window=64, overlap=16, threshold=0.0, nms_iou=0.5)
    boxes, scores, labels = detect_pixels(det, rgb, q, options)
    assert len(boxes) > 0 and np.all(np.diff(scores) <= 0)
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 150 and boxes[:, 3].max() <= 100
    assert boxes[:, 2].max() > 64  # windows reach past the first one
    assert set(labels.tolist()) <= {0, 1}
    valid = np.zeros((100, 150), bool)
    valid[:, :75] = True  # no imagery on the right half: no box centred there
    boxes, _, _ = detect_pixels(det, rgb, q, options, valid)
    assert np.all((boxes[:, 0] + boxes[:, 2]) / 2 < 75)


def test_box_ap_on_nairobi_labels() -> None:
    truth = read_instances(LABELS, role="TRUTH")
    crs = metric_crs(truth)
    metric = to_crs(truth, crs)
    perfect = gpd.GeoDataFrame(
        {"score": np.linspace(1, 0.1, len(truth))}, geometry=list(truth.geometry), crs=truth.crs
    )
    assert evaluate_boxes(perfect, truth).ap == pytest.approx(1.0)
    # each label moved right by a fifth of its box width: IoU 0.8 / 1.2 = 2/3 with its own box
    bounds = shapely.bounds(metric.geometry)
    dx = 0.2 * (bounds[:, 2] - bounds[:, 0])
    moved = [shapely.affinity.translate(g, xoff=d) for g, d in zip(metric.geometry, dx)]
    shifted = gpd.GeoDataFrame({"score": perfect["score"]}, geometry=moved, crs=crs)
    result = evaluate_boxes(shifted, truth)
    assert result.ap50 == pytest.approx(1.0) and result.ap75 == 0.0
    assert result.ap == pytest.approx(0.4)
    # only the labels whose centre lies in the area count
    area = shapely.box(*SMALL_BOX)
    inside = shapely.contains(
        gpd.GeoSeries([area], crs=4326).to_crs(crs).iloc[0], shapely.centroid(metric.geometry)
    )
    clipped = evaluate_boxes(perfect, truth, area=area)
    assert 0 < clipped.n_truth == int(inside.sum()) < len(truth)
    assert clipped.ap == pytest.approx(1.0)
    half = replace(truth, geometry=truth.geometry[::2])
    assert evaluate_boxes(perfect.iloc[::2], half).ap == pytest.approx(1.0)


def test_ob_detect_end_to_end_with_text_queries(
    checkpoint: tuple[Path, OwlViTDetector], queries: Path, tmp_path: Path, capsys
) -> None:
    folder, _ = checkpoint
    region = write_region(tmp_path / "small.geojson", SMALL_BOX)
    out = tmp_path / "boxes.geojson"
    args = [str(region), "--imagery", str(SAMPLE / "items.json"), "--model", str(folder)]
    args += ["--query", str(queries), "--out", str(out), "--truth", str(LABELS)]
    args += ["--window", "512", "--threshold", "0.05", "--no-progress"]
    args += ["--tile-level", str(TEST_TILE_LEVEL)]
    assert detect_main(args) == 0
    found = gpd.read_file(out)
    assert list(found.columns) == ["score", "query", "tile", "geometry"]
    assert len(found) > 0 and (found["score"] > 0.05).all()
    assert np.all(np.diff(found["score"].to_numpy()) <= 0)
    assert set(found["query"]) <= {0, 1}
    spec = grid.GridSpec(level=TEST_TILE_LEVEL)
    cores = {t.id: t.core for t in grid.cover(shapely.box(*SMALL_BOX), spec)}
    assert set(found["tile"]) <= set(cores)
    for tile_id, geom in zip(found["tile"], found.geometry, strict=True):
        assert cores[tile_id].buffer(1e-9).contains(geom.centroid)  # written by its owner
    metrics = json.loads((tmp_path / "boxes.metrics.json").read_text())
    assert metrics["n_truth"] > 0 and 0.0 <= metrics["AP"] <= 1.0
    assert "box AP" in capsys.readouterr().out
    assert detect_main(args) == 2  # the output exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_ob_detect_on_an_image_with_an_example_box(
    checkpoint: tuple[Path, OwlViTDetector], tmp_path: Path, capsys
) -> None:
    folder, det = checkpoint
    image = SAMPLE / "nairobi_b.tif"
    source = open_imagery(str(image))
    west, south, east, north = source.bounds_lonlat()
    labels = gpd.read_file(LABELS)
    centres = labels.geometry.representative_point()
    inside = labels[
        (centres.x > west) & (centres.x < east) & (centres.y > south) & (centres.y < north)
    ]
    example = tuple(inside.geometry.iloc[0].bounds)
    query = example_query(det, source, example, spec=grid.GridSpec(level=TEST_TILE_LEVEL))
    assert query.shape == (1, QUERY_DIM) and torch.isfinite(query).all()
    out = tmp_path / "example.geojson"
    args = [str(image), "--model", str(folder), "--example", ",".join(map(str, example))]
    args += ["--out", str(out), "--window", "512", "--no-progress"]
    args += ["--tile-level", str(TEST_TILE_LEVEL)]
    assert detect_main(args) == 0, capsys.readouterr().err
    found = gpd.read_file(out)
    assert set(found["query"]) <= {0}
    footprint = shapely.box(west, south, east, north).buffer(0.01)
    assert all(footprint.contains(g) for g in found.geometry)
    far = "10.0,10.0,10.001,10.001"
    args = [str(image), "--model", str(folder), "--example", far, "--out", str(tmp_path / "x.json")]
    assert detect_main([*args, "--tile-level", str(TEST_TILE_LEVEL)]) == 2
    assert "no imagery covers the example box" in capsys.readouterr().err


def test_ob_detect_sends_unreadable_tiles_to_dead_letters_and_finishes_the_rest(
    checkpoint: tuple[Path, OwlViTDetector], queries: Path, tmp_path: Path, capsys
) -> None:
    folder, _ = checkpoint
    imagery = corrupt_mosaic(tmp_path / "mosaic")
    region = write_region(tmp_path / "r.geojson", (36.9065, -1.3065, 36.9075, -1.3055))
    out = tmp_path / "boxes.geojson"
    args = [str(region), "--imagery", str(imagery), "--model", str(folder), "--query", str(queries)]
    args += ["--out", str(out), "--window", "512", "--threshold", "0.05", "--no-progress"]
    assert detect_main([*args, "--tile-level", str(TEST_TILE_LEVEL)]) == 0
    dead = [json.loads(line) for line in detect.dead_letter_path(out).read_text().splitlines()]
    assert dead and all(d["stage"] == "read" and "could not be read" in d["reason"] for d in dead)
    found = gpd.read_file(out)
    assert len(found) > 0 and not set(found["tile"]) & {d["tile_id"] for d in dead}
    assert f"dead letters: {len(dead)} tile(s) failed" in capsys.readouterr().out


def test_an_interrupted_ob_detect_resumes_without_detecting_again(
    checkpoint: tuple[Path, OwlViTDetector], queries: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    folder, _ = checkpoint
    region = write_region(tmp_path / "small.geojson", SMALL_BOX)

    def args(out: Path, *extra: str) -> list[str]:
        return [
            *(str(region), "--imagery", str(SAMPLE / "items.json"), "--model", str(folder)),
            *("--query", str(queries), "--out", str(out), "--window", "512", "--no-progress"),
            *("--threshold", "0.05", "--tile-level", str(TEST_TILE_LEVEL), *extra),
        ]

    clean = tmp_path / "clean.geojson"
    assert detect_main(args(clean)) == 0
    out = tmp_path / "boxes.geojson"
    real_write = detect._write_geojson

    def crash(frames: list, dead: list, out: str) -> int:
        raise RuntimeError("worker lost before the file was written (simulated)")

    monkeypatch.setattr(detect, "_write_geojson", crash)
    assert detect_main(args(out)) == 1
    assert "--resume" in capsys.readouterr().err and not out.exists()
    partials = sorted((tmp_path / ".boxes.geojson.work" / "tiles").glob("*.parquet"))
    assert len(partials) == grid.count_tiles(shapely.box(*SMALL_BOX), grid.GridSpec(16))
    monkeypatch.setattr(detect, "_write_geojson", real_write)

    def no_detect(*a: object, **k: object) -> None:
        raise AssertionError("a finished tile was detected again")

    monkeypatch.setattr(detect, "detect_tile", no_detect)
    assert detect_main(args(out)) == 2  # the work folder is there: refused without --resume
    assert detect_main(args(out, "--resume")) == 0
    assert out.read_bytes() == clean.read_bytes()
    assert not (tmp_path / ".boxes.geojson.work").exists()
