"""``ob-models soup``: real fine-tunes of the shipped model averaged, then calibrated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA

from open_buildings.commands import models as ob_models
from open_buildings.errors import ConfigError
from open_buildings.models.checkpoint import (
    load_checkpoint,
    read_input_ranges,
    read_operating_points,
    save_checkpoint,
)
from open_buildings.models.registry import build_model
from open_buildings.resources import resource
from open_buildings.training import loop
from open_buildings.training.soup import average_weights

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = Path(str(resource("models", "default", "weights.safetensors")))
SAMPLE = ROOT / "geo" / "sample" / "items.json"
NAIROBI = DATA / "labels" / "nairobi_ke.geojson"
BANEPA = "labels/banepa_4tiles.geojson"


@pytest.fixture(scope="module")
def fine_tunes(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The shipped model fine-tuned twice on the Banepa tiles, 2 steps each, seeds 1 and 2."""
    from conftest import make_config

    out = []
    for seed in (1, 2):
        cfg = make_config(
            tmp_path_factory.mktemp(f"ft{seed}"),
            "model=unet_efficientnet_lite1",
            f"start_from={DEFAULT}",
            "steps=2",
            "lr=0.001",
            f"seed={seed}",
        )
        out.append(loop.train(cfg, progress=False)["weights"])
    return out


def _config(tmp_path: Path) -> Path:
    """An ob-train config: the Banepa tiles to train on, the Nairobi sample to validate on."""
    path = tmp_path / "soup.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": "unet_efficientnet_lite1",
                "data_root": str(DATA),
                "train": [{"name": "banepa", "imagery": "imagery/banepa", "labels": BANEPA}],
                "val": [{"name": "sample", "imagery": str(SAMPLE), "labels": str(NAIROBI)}],
            }
        )
    )
    return path


def test_the_soup_is_the_mean_of_the_fine_tunes_and_is_calibrated(
    fine_tunes: list[str], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "soup" / "weights.safetensors"
    assert ob_models.main(["soup", str(_config(tmp_path)), *fine_tunes, "--out", str(out)]) == 0
    assert "the mean of 2 checkpoints" in capsys.readouterr().out

    a, b = (load_checkpoint(m).state_dict() for m in fine_tunes)
    soup = load_checkpoint(out).state_dict()  # its sha256 sidecar is checked on loading
    changed = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert changed  # the two fine-tunes really differ
    for key in changed:
        torch.testing.assert_close(soup[key], (a[key] + b[key]) / 2, rtol=0, atol=1e-6)

    points = read_operating_points(out)
    assert points["measured_on"] == "sample" and 0 < points["best_f1"]["threshold"] < 1
    assert points["best_f1"]["f1"] > 0.5  # the shipped model finds the sample's buildings
    assert read_input_ranges(out)["measured_on"] == "banepa"
    record = json.loads((out.parent / "weights.soup.json").read_text())
    assert [m["path"] for m in record["members"]] == fine_tunes
    assert record["operating_points"]["best_f1"] == points["best_f1"]

    again = ["soup", str(_config(tmp_path)), *fine_tunes, "--out", str(out)]
    assert ob_models.main(again) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err


def test_only_fine_tunes_of_one_network_make_a_soup(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    tiny, lite = build_model("unet_tiny"), build_model("unet_efficientnet_lite0")
    with pytest.raises(ConfigError, match="fine-tunes of one model"):
        average_weights([tiny, lite], ["tiny", "lite"])
    with pytest.raises(ConfigError, match="at least two"):
        average_weights([tiny], ["tiny"])
    paths = []
    for name, model in (("tiny", tiny), ("lite", lite)):
        paths.append(str(tmp_path / f"{name}.safetensors"))
        save_checkpoint(model, paths[-1])
    out = tmp_path / "soup.safetensors"
    assert ob_models.main(["soup", str(_config(tmp_path)), *paths, "--out", str(out)]) == 2
    assert "fine-tunes of one model" in capsys.readouterr().err and not out.exists()
    missing = str(tmp_path / "missing.safetensors")
    assert (
        ob_models.main(["soup", str(_config(tmp_path)), paths[0], missing, "--out", str(out)]) == 2
    )
    assert "does not exist" in capsys.readouterr().err and not out.exists()


def test_a_soup_takes_integers_from_the_first_and_averages_the_rest() -> None:
    torch.manual_seed(0)
    first, second = build_model("unet_tiny"), build_model("unet_tiny")
    for model, value in ((first, 1.0), (second, 3.0)):
        with torch.no_grad():
            for tensor in model.state_dict().values():
                tensor.fill_(value if tensor.is_floating_point() else int(value))
    averaged = average_weights([first, second], ["a", "b"])
    for key, tensor in averaged.items():
        expected = 2.0 if tensor.is_floating_point() else 1
        assert torch.all(tensor == expected), key
