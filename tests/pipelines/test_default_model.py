"""The shipped default model really finds buildings: ob-infer on the sample, scored by ob-eval.

The sample is Nairobi imagery, held out from training. The truth is the OSM buildings inside
the sample region. An untrained model of the same architecture scores F1 ~0 here (see
models/default/MODEL_CARD.md for the full held-out figures).
"""

import json
from pathlib import Path

import pytest
import shapely
from conftest import output_digests

from open_buildings.commands import infer as ob_infer
from open_buildings.evaluation.evaluate import evaluate_files
from open_buildings.evaluation.thresholds import best_f1
from open_buildings.geo.regions import read_region
from open_buildings.geo.shard_read import read_footprints
from open_buildings.models.checkpoint import read_operating_points
from open_buildings.resources import resource

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = resource("models", "default", "weights.safetensors")


pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="models/default/ has no weights")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ob-infer`` with no options but ``--out``: the sample, the default model, its defaults."""
    out = tmp_path_factory.mktemp("default") / "footprints"
    assert ob_infer.main(["--out", str(out), "--no-progress"]) == 0
    return out


def test_default_model_finds_the_sample_buildings(default_run: Path) -> None:
    out = default_run
    result = evaluate_files(
        str(out),
        str(ROOT / "tests/data/labels/nairobi_ke.geojson"),
        region_path=str(ROOT / "geo/sample/region.geojson"),
    )
    # Measured when the model was committed (what ob-infer writes by default, 60 footprints):
    # AP50 0.612, F1 0.698 (precision 0.733, recall 0.667), best F1 0.721 at >= 0.878 (the base
    # before it: 0.622, 0.710, 0.748); an untrained model scores 0 on all of them.
    assert result.n_truth > 40
    assert result.coco.ap50 > 0.5, result.coco
    assert best_f1(result.curve)["f1"] > 0.55, best_f1(result.curve)
    assert result.f1.total.f1 > 0.6 and result.f1.total.recall > 0.55, result.f1.total


def test_a_model_shared_by_two_worker_processes_writes_the_same_files(
    default_run: Path, tmp_path: Path
) -> None:
    # share_model_across_processes: one model process serves the others through Beam's proxy.
    out = tmp_path / "shared"
    argv = ["--out", str(out), "--no-progress", "--workers", "2"]
    assert ob_infer.main([*argv, "-o", "runtime.share_model_across_processes=true"]) == 0
    assert output_digests(out) == output_digests(default_run)


def test_one_thread_writes_what_two_sharing_the_model_write(
    default_run: Path, tmp_path: Path
) -> None:
    # The default run works on two tiles at once; one thread must write the same bytes.
    out = tmp_path / "one_thread"
    assert ob_infer.main(["--out", str(out), "--no-progress", "--threads", "1"]) == 0
    assert output_digests(out) == output_digests(default_run)


def test_the_default_output_is_calibrated_and_clipped_to_the_region(
    default_run: Path, tmp_path: Path
) -> None:
    points = read_operating_points(Path(str(WEIGHTS)))
    assert points is not None and "nairobi" in points["measured_on"].lower()
    threshold = points["best_f1"]["threshold"]
    settings = json.loads((default_run / "manifest.json").read_text())["settings"]
    assert settings["min_confidence"] == threshold and settings["clip_to_region"] is True
    assert "best-F1 operating point" in settings["min_confidence_source"]
    written = read_footprints(default_run)
    assert len(written) > 20 and (written["confidence"] >= threshold).all()
    region = read_region(ROOT / "geo/sample/region.geojson").geometry
    lon, lat = written["longitude"].to_numpy(), written["latitude"].to_numpy()
    assert shapely.intersects_xy(region, lon, lat).all()

    everything = tmp_path / "everything"
    argv = ["--out", str(everything), "--min-confidence", "0", "--keep-whole-tiles"]
    assert ob_infer.main([*argv, "--no-progress"]) == 0
    whole = read_footprints(everything)
    assert json.loads((everything / "manifest.json").read_text())["settings"] == {
        "min_confidence": 0.0,
        "min_confidence_source": "set by the user",
        "clip_to_region": False,
        "tta": False,
        "decode": "host",
        "write_probabilities": False,
        "region": str(resource("geo", "sample", "region.geojson")),
        "imagery": str(resource("geo", "sample", "items.json")),
    }
    inside = shapely.intersects_xy(region, whole["longitude"], whole["latitude"])
    kept = inside & (whole["confidence"].to_numpy() >= threshold)
    assert (~inside).sum() > 0 and (whole["confidence"] < threshold).sum() > 0
    assert sorted(whole.geometry[kept].to_wkt()) == sorted(written.geometry.to_wkt())


def test_ob_eval_model_reports_what_the_default_output_scores(
    default_run: Path, tmp_path: Path, capsys
) -> None:
    from open_buildings.commands import evaluate_model as ob_eval_model

    labels = ROOT / "tests/data/labels/nairobi_ke.geojson"
    region = ROOT / "geo/sample/region.geojson"
    figures = tmp_path / "figures.json"
    argv = ["default", "--imagery", str(ROOT / "geo/sample/items.json"), "--truth", str(labels)]
    assert ob_eval_model.main([*argv, "--region", str(region), "--out", str(figures)]) == 0
    got = json.loads(figures.read_text())
    # the F1 it reports for the default output is that of the footprints ob-infer writes,
    # scored by ob-infer's region rule (ob-eval --region-rule centroid)
    written = evaluate_files(
        str(default_run), str(labels), region_path=str(region), by_centroid=True
    )
    assert got["default_output"]["f1"] == pytest.approx(written.f1.total.f1)
    assert got["default_output"]["n_pred"] == written.n_pred
    assert got["best_f1"]["f1"] >= got["default_output"]["f1"]
    assert got["threshold"] == read_operating_points(Path(str(WEIGHTS)))["best_f1"]["threshold"]
    assert "default output (confidence >=" in capsys.readouterr().out
    # areas are given as pairs: a --truth for every --imagery
    assert ob_eval_model.main([*argv, "--imagery", str(ROOT / "geo/sample/items.json")]) == 2
    assert "one --truth" in capsys.readouterr().err
