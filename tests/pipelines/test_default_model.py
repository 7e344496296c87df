"""The shipped default model really finds buildings: ob-infer on the sample, scored by ob-eval.

The sample is Nairobi imagery, held out from training. The truth is the OSM buildings inside
the sample region. An untrained model of the same architecture scores F1 ~0 here (see
models/default/MODEL_CARD.md for the full held-out figures).
"""

from pathlib import Path

import pytest

from open_buildings.commands import infer as ob_infer
from open_buildings.evaluation.evaluate import evaluate_files
from open_buildings.evaluation.thresholds import best_f1
from open_buildings.resources import resource

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = resource("models", "default", "weights.safetensors")


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="models/default/ has no weights yet")
def test_default_model_finds_the_sample_buildings(tmp_path: Path) -> None:
    out = tmp_path / "footprints"
    assert ob_infer.main(["--out", str(out)]) == 0  # no options but --out: sample + default model
    result = evaluate_files(
        str(out),
        str(ROOT / "tests/data/labels/nairobi_ke.geojson"),
        region_path=str(ROOT / "geo/sample/region.geojson"),
    )
    # Measured when the model was committed: AP50 0.652, best F1 0.691 (at confidence >= 0.79),
    # recall 0.79 over all predictions; an untrained model scores 0 on all three.
    assert result.n_truth > 40
    assert result.coco.ap50 > 0.5, result.coco
    assert best_f1(result.curve)["f1"] > 0.55, best_f1(result.curve)
    assert result.f1.total.recall > 0.6, result.f1.total
