"""ob-pretrain on real data (the UC Merced subset, the Banepa tiles): the encoder learns, its file
loads through init_from into the same family only, and the command's messages."""

from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from open_buildings.commands import pretrain as ob_pretrain
from open_buildings.config import load_config
from open_buildings.errors import CheckpointError
from open_buildings.models.checkpoint import load_checkpoint
from open_buildings.training import loop
from open_buildings.training.config import PretrainConfig, TrainConfig
from open_buildings.training.pretrain import ENCODER, pretrain

#: a training area the config needs but these tests never read
ANY_AREA = [{"name": "a", "imagery": "a"}]

DATA = Path(__file__).resolve().parents[1] / "data"


def _config(tmp_path: Path, *overrides: str) -> PretrainConfig:
    base = ["objective=supervised_scene", "model=unet_efficientnet_lite0",
            f"scenes={DATA / 'uc_merced'}", "size=64", "batch_size=16", "steps=20", "lr=0.002",
            f"out={tmp_path / 'enc'}"]  # fmt: skip
    return load_config(PretrainConfig, None, [*base, *overrides])


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory) -> dict:
    return pretrain(_config(tmp_path_factory.mktemp("scene")), progress=False)


def test_supervised_scene_learns_the_classes(scene_run) -> None:
    losses = [h["loss"] for h in scene_run["history"]]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    # 42 held-out scenes of 21 classes: chance is 0.048
    assert scene_run["summary"]["scene_test_top1"] > 0.2
    card = (Path(scene_run["encoder"]).parent / "ENCODER_CARD.md").read_text()
    assert scene_run["sha256"] in card and "scene set's held-out test split" in card


def test_the_encoder_file_initialises_ob_train_and_only_its_family(scene_run, tmp_path) -> None:
    encoder = scene_run["encoder"]
    cfg = TrainConfig(model="unet_efficientnet_lite0", init_from=encoder, train=ANY_AREA)
    model = loop.new_model(cfg)
    saved = load_file(encoder)
    own = model.net.encoder.state_dict()
    assert saved and all((own[k] == v).all() for k, v in saved.items())
    with pytest.raises(CheckpointError, match="encoder of 'unet_efficientnet_lite0'"):
        loop.new_model(
            TrainConfig(model="unet_efficientnet_lite1", init_from=encoder, train=ANY_AREA)
        )
    with pytest.raises(CheckpointError, match="encoder alone"):
        load_checkpoint(encoder)
    # a searched decoder (ob-search) on the same encoder takes it; another encoder does not
    searched = {"decoder_cell": [[0, "sep3", 1, "avg3"]]}
    loop.new_model(TrainConfig(model="unet_efficientnet_lite0", model_overrides=searched,
                               init_from=encoder, train=ANY_AREA))  # fmt: skip
    shallower = {"encoder_depth": 4, "decoder_channels": [128, 64, 32, 16]}
    with pytest.raises(CheckpointError, match="encoder of"):
        loop.new_model(TrainConfig(model="unet_efficientnet_lite0", model_overrides=shallower,
                                   init_from=encoder, train=ANY_AREA))  # fmt: skip
    # a file written before a config field existed (here decoder_cell) still loads
    import json

    from safetensors import safe_open

    from open_buildings.models.checkpoint import write_safetensors

    with safe_open(encoder, framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = json.loads(meta["config"])
    config.pop("decoder_cell")
    older = tmp_path / "older.safetensors"
    write_safetensors(older, tensors, {**meta, "config": json.dumps(config)})
    loop.new_model(
        TrainConfig(model="unet_efficientnet_lite0", init_from=str(older), train=ANY_AREA)
    )
    copy = tmp_path / ENCODER
    copy.write_bytes(Path(encoder).read_bytes()[:-8] + b"\0" * 8)
    (tmp_path / f"{ENCODER}.sha256").write_text(Path(f"{encoder}.sha256").read_text())
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        loop.new_model(
            TrainConfig(model="unet_efficientnet_lite0", init_from=str(copy), train=ANY_AREA)
        )


def test_simsiam_moves_the_encoder_without_collapse(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path, "objective=simsiam", "scenes=null", "steps=4", "batch_size=8",
        f"imagery=[{{name: banepa, imagery: {DATA / 'imagery' / 'banepa'}}}]",
    )  # fmt: skip
    result = pretrain(cfg, progress=False)
    start = loop.new_model(TrainConfig(model="unet_efficientnet_lite0", init_from="imagenet",
                                       train=ANY_AREA)).net.encoder.state_dict()  # fmt: skip
    after = load_file(result["encoder"])
    assert any(not (start[k] == v).all() for k, v in after.items() if v.is_floating_point())
    assert all(np.isfinite(h["loss"]) and -1 <= h["loss"] <= 1 for h in result["history"])
    assert result["summary"]["z_spread_last"] > 0.3 and result["summary"]["n_chips"] >= 8


def test_ob_pretrain_command(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "objective: supervised_scene\nmodel: unet_tiny\ninit_from: null\n"
        f"scenes: {DATA / 'uc_merced'}\nsize: 32\nbatch_size: 4\nsteps: 2\n"
    )
    argv = [str(config), "--out", str(tmp_path / "e"), "--quiet"]
    assert ob_pretrain.main(argv) == 0
    out = capsys.readouterr().out
    assert "scene test top-1" in out and (tmp_path / "e" / ENCODER).is_file()
    assert ob_pretrain.main(argv) == 2  # it holds an encoder already
    assert "already holds" in capsys.readouterr().err
    assert ob_pretrain.main([str(config), "-o", "objective=simsiam", "-o", "scenes=null"]) == 2
    assert "needs 'imagery'" in capsys.readouterr().err


def test_ob_vtab_scores_an_encoder_file(scene_run) -> None:
    from open_buildings.training.vtab import load_backbone

    model = load_backbone(f"unet_efficientnet_lite0:{scene_run['encoder']}")()
    saved = load_file(scene_run["encoder"])
    assert all((model.net.encoder.state_dict()[k] == v).all() for k, v in saved.items())
