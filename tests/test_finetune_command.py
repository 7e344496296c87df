"""ob-finetune end to end on real Banepa tiles from the shipped model: a model folder that
ob-infer runs, before/after figures, and bad input as messages."""

import json
from pathlib import Path

import geopandas as gpd
import pytest

from open_buildings.commands import finetune as ob_finetune
from open_buildings.commands import infer as ob_infer
from open_buildings.commands.evaluate_model import write_bbox_region
from open_buildings.geo.imagery import open_imagery

DATA = Path(__file__).resolve().parent / "data"
IMAGERY = str(DATA / "imagery" / "banepa")
LABELS = str(DATA / "labels" / "banepa_4tiles.geojson")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ft") / "my-area"
    import contextlib
    import io
    import warnings

    said = io.StringIO()
    with contextlib.redirect_stdout(said), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = ob_finetune.main(
            [
                "--imagery",
                IMAGERY,
                "--labels",
                LABELS,
                "--minutes",
                "0.05",
                "--threads",
                "2",
                "--out",
                str(out),
            ]
        )
    assert status == 0
    few = [str(w.message) for w in caught if "buildings in 1 tiles to train on" in str(w.message)]
    assert len(few) == 1, "a split this small must be warned about"
    return out, said.getvalue()


def test_it_writes_a_model_folder_with_before_and_after(tuned) -> None:
    out, printed = tuned
    for name in (
        "weights.safetensors",
        "weights.safetensors.sha256",
        "weights.onnx",
        "weights.onnx.sha256",
        "MODEL_CARD.md",
        "finetune.json",
        "config.yaml",
    ):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint").exists() and not (out / "best.safetensors").exists()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no partial folder left
    config = (out / "config.yaml").read_text()
    assert ".partial" not in config and str(out.resolve() / "finetune" / "labels.geojson") in config
    report = json.loads((out / "finetune.json").read_text())
    assert report["stopped"].startswith("time budget") and report["steps"] >= 1
    for side in ("before", "after"):
        figures = report[side]
        assert figures["n_truth"] > 20 and 0 <= figures["default_f1"] <= 1
        assert figures["ap50"] is not None and figures["best_f1"] >= figures["default_f1"] - 1e-9
    assert set(report["split"]["train"]).isdisjoint(report["split"]["held_back"])
    assert "| base |" in printed and "| fine-tuned |" in printed
    card = (out / "MODEL_CARD.md").read_text()
    assert "| fine-tuned |" in card and report["base_sha256"] in card
    assert report["best_step"] in (0, report["steps"]) and "kept:" in card
    # one tile to train on: few buildings, so --freeze-encoder auto kept the base's encoder
    assert report["encoder_frozen"] is True and "the encoder frozen" in card


def test_ob_infer_runs_the_fine_tuned_model(tuned, tmp_path: Path) -> None:
    out, _ = tuned
    region = write_bbox_region(open_imagery(IMAGERY).bounds_lonlat(), tmp_path / "r.json")
    status = ob_infer.main(
        [
            region,
            "--imagery",
            IMAGERY,
            "--model",
            str(out),
            "--out",
            str(tmp_path / "fp"),
            "--no-progress",
        ]
    )
    assert status == 0
    manifest = json.loads((tmp_path / "fp" / "manifest.json").read_text())
    sha = (out / "weights.safetensors.sha256").read_text().split()[0]
    assert sha in json.dumps(manifest)
    threshold = json.loads((out / "finetune.json").read_text())["after"]["threshold"]
    import pandas as pd

    rows = pd.concat(pd.read_csv(p) for p in (tmp_path / "fp").glob("*.csv.gz"))
    assert len(rows) > 0 and rows["confidence"].min() >= threshold - 1e-6


def test_too_few_labels_and_a_used_folder_are_messages(tmp_path: Path, capsys) -> None:
    few = tmp_path / "few.geojson"
    frame = gpd.read_file(LABELS).iloc[:10]
    frame.to_file(few, driver="GeoJSON")
    argv = ["--imagery", IMAGERY, "--labels", str(few), "--out", str(tmp_path / "m")]
    assert ob_finetune.main(argv) == 2
    assert "needs at least 20" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    argv = ["--imagery", IMAGERY, "--labels", LABELS, "--out", str(tmp_path / "used")]
    assert ob_finetune.main(argv) == 2
    assert "not empty" in capsys.readouterr().err


def test_a_fine_tune_worse_than_its_base_is_warned_about(tmp_path: Path, monkeypatch) -> None:
    # The scores are scripted (the run itself is real): after below before must be said.
    from open_buildings.commands import evaluate_model

    def scores(f1: float) -> dict:
        out = {"f1": f1, "precision": f1, "recall": f1, "threshold": 0.5, "n_pred": 9}
        return {"default_output": out, "best_f1": out, "threshold": 0.5, "ap50": f1,
                "n_truth": 30}  # fmt: skip

    given = iter([scores(0.6), scores(0.4)])
    monkeypatch.setattr(evaluate_model, "score_model", lambda *a, **k: next(given))
    argv = ["--imagery", IMAGERY, "--labels", LABELS, "--minutes", "0.01", "--out",
            str(tmp_path / "m")]  # fmt: skip
    with pytest.warns(UserWarning, match=r"scores below the base's .*F1 0.400 < 0.600"):
        assert ob_finetune.main(argv) == 0
