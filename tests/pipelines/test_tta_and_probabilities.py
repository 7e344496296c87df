"""``--tta`` averages the 8 flips/turns; ``--write-probabilities`` writes each tile's COG."""

import json
from pathlib import Path

import numpy as np
import rasterio
import torch
from conftest import SAMPLE

from open_buildings.commands import infer as ob_infer
from open_buildings.geo import grid
from open_buildings.geo.imagery import open_imagery
from open_buildings.models.checkpoint import load_checkpoint
from open_buildings.pipelines import probabilities
from open_buildings.pipelines.runtime import run_model


def _by_hand(model, image: np.ndarray) -> np.ndarray:
    """The D4 average written out in numpy: transform the tile, predict, undo, average."""
    total = np.zeros((2, *image.shape[1:]), dtype=np.float64)
    for flip in (False, True):
        for turns in range(4):
            x = image[:, :, ::-1] if flip else image
            x = np.ascontiguousarray(np.rot90(x, turns, axes=(1, 2)))
            y = np.rot90(run_model(model, [x])[0], -turns, axes=(1, 2))
            y = y[:, :, ::-1] if flip else y
            total += 1 / (1 + np.exp(-y))
    return total / 8


def test_tta_is_the_mean_probability_of_the_eight_symmetries(tiny_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_checkpoint).eval()
    rgb = open_imagery(str(SAMPLE / "items.json")).read(grid.Tile("182f13ab").grid).rgb
    image = np.ascontiguousarray(rgb[:, 300:428, 500:692])  # 128 x 192: no padding needed
    plain = run_model(model, [image])[0]
    tta = run_model(model, [image], tta=True)[0]
    probs = 1 / (1 + np.exp(-tta.astype(np.float64)))
    np.testing.assert_allclose(probs, _by_hand(model, image), atol=2e-5)
    assert np.abs(probs - 1 / (1 + np.exp(-plain))).max() > 1e-3  # it is not the plain output
    # a tile's TTA result does not depend on the tile batched with it
    other = np.ascontiguousarray(rgb[:, :128, :192])
    np.testing.assert_allclose(run_model(model, [other, image], tta=True)[1], tta, atol=1e-4)


def test_ob_infer_writes_probability_cogs_and_records_tta(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    argv = ["--model", str(tiny_checkpoint), "--out", str(out), "--no-progress"]
    assert ob_infer.main([*argv, "--tta", "--write-probabilities", "--backend", "torch"]) == 0
    settings = json.loads((out / "manifest.json").read_text())["settings"]
    assert settings["tta"] is True and settings["write_probabilities"] is True
    files = sorted((out / "probabilities").iterdir())
    assert [f.name for f in files] == ["182f13a9.tif", "182f13ab.tif"]
    tile = grid.Tile("182f13ab")
    with rasterio.open(files[1]) as src:
        assert src.driver == "GTiff" and src.overviews(1)  # a COG: tiled, with overviews
        assert src.descriptions == ("building", "interior") and src.nodata == 255
        assert src.scales == (1 / 250, 1 / 250)
    probs, has = probabilities.read_probabilities(str(files[1]), tile.grid)
    image = open_imagery(str(SAMPLE / "items.json")).read(tile.grid)
    assert (has == image.valid).all()
    logits = run_model(load_checkpoint(tiny_checkpoint).eval(), [image.rgb], tta=True)[0]
    expected = torch.sigmoid(torch.from_numpy(logits)).numpy()
    assert np.abs(probs - expected)[:, has].max() <= 0.5 / 250 + 1e-4
    # an ordinary run writes none
    assert ob_infer.main([*argv[:3], str(tmp_path / "plain"), "--no-progress"]) == 0
    assert not (tmp_path / "plain" / "probabilities").exists()
