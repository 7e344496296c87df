"""Every swappable backbone family trains with ob-train and runs in ob-infer, on real data.

For each family's tiny test config: ``ob-train`` runs a few steps on the real Banepa chips (OAM
imagery, OSM labels), then the job ob-infer runs uses that checkpoint over real Nairobi sample
tiles. Quality is not the point here (see models/<name>/MODEL_CARD.md); the plumbing is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from open_buildings.commands import train as ob_train
from open_buildings.models.checkpoint import file_sha256, load_checkpoint
from open_buildings.models.registry import build_model, list_models
from open_buildings.pipelines import job
from tests.pipelines.conftest import job_config

DATA = Path(__file__).resolve().parents[1] / "data"
TINY_BACKBONES = [n for n in ("vit_siglip_tiny", "owlvit_tiny", "vmoe_tiny") if n in list_models()]


@pytest.mark.parametrize("name", TINY_BACKBONES)
def test_backbone_trains_with_ob_train_and_runs_in_ob_infer(
    name: str, tmp_path: Path, small_region: Path, capsys
) -> None:
    run = tmp_path / "run"
    status = ob_train.main(
        [
            "pipelines/train/smoke.yaml",
            "--quiet",
            "--out",
            str(run),
            "-o",
            f"model={name}",
            "-o",
            f"data_root={DATA}",
            "-o",
            "train=[{name: banepa, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson}]",
            "-o",
            "val=[]",
            "-o",
            "chip={size: 64, empty_share: 0.0}",
            "-o",
            "steps=3",
        ]
    )
    assert status == 0, capsys.readouterr().err
    weights = run / "weights.safetensors"
    trained = load_checkpoint(weights)
    assert trained.name == name
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 3 and all(h["loss"] > 0 for h in history)
    torch.manual_seed(0)
    untrained = build_model(name).state_dict()
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, untrained[k])]
    assert changed, "three optimizer steps changed no weight"

    out = tmp_path / "footprints"
    config = job_config(tmp_path, region=small_region, model=weights, output=out)
    counters = job.counters(job.run(["--config", str(config)]))
    assert counters["tiles_read"] == 4 and counters["tiles_failed"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["sha256"] == file_sha256(weights)
