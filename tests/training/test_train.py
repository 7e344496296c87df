"""ob-train on real Banepa chips: the loss falls, resume is exact, self-training runs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from open_buildings.commands import train as ob_train
from open_buildings.config import load_config
from open_buildings.errors import ConfigError
from open_buildings.models.checkpoint import load_checkpoint
from open_buildings.training import batches, loop
from open_buildings.training.config import TrainConfig
from open_buildings.training.loop import train
from tests.training.conftest import assert_resume_is_exact

DATA = Path(__file__).resolve().parents[1] / "data"


def test_loss_falls_on_a_real_chip(config_factory) -> None:
    # The same two real chips every step (seed fixed, one scene): the model must fit them.
    cfg = config_factory(
        "steps=40", "chip={size: 64, empty_share: 0.0}", "lr=0.02", "warmup_steps=0"
    )
    steps = []
    for record in _train_fixed_batch(cfg):
        steps.append(record)
    first, last = np.mean(steps[:5]), np.mean(steps[-5:])
    assert last < 0.6 * first, f"loss went from {first:.3f} to {last:.3f}"


def _train_fixed_batch(cfg: TrainConfig):
    """Train on one fixed real batch (step 0's chips) with ``train_step``; yield each loss."""
    from open_buildings.training import chips

    pool = chips.ScenePool(batches.load_areas(cfg, cfg.train, labelled=True))
    batch = batches.labelled_batch(pool, cfg, 0, chips.augmenter())
    assert batch.targets[:, 0].sum() > 0, "the chips must hold buildings"
    model = loop.new_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    for step in range(cfg.steps):
        yield loop.train_step(model, optimizer, batch, cfg, step)["loss"]


def _fixed_batch(cfg: TrainConfig) -> batches.Batch:
    from open_buildings.training import chips

    pool = chips.ScenePool(batches.load_areas(cfg, cfg.train, labelled=True))
    return batches.labelled_batch(pool, cfg, 0, chips.augmenter())


def test_train_step_updates_the_weights_and_reports_the_loss(config_factory) -> None:
    from open_buildings.models.losses import segmentation_loss

    cfg = config_factory("chip={size: 64, empty_share: 0.0}", "warmup_steps=2")
    batch = _fixed_batch(cfg)
    model = loop.new_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(cfg.seed * 1_000_003 + 0)  # the seed train_step sets for step 0
    model.train()
    want = segmentation_loss(model(batch.images), batch.targets, batch.weights).item()
    model.load_state_dict(before)
    record = loop.train_step(model, optimizer, batch, cfg, 0)
    assert record == {"step": 1, "loss": pytest.approx(want, rel=1e-5), "mixup": False}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(loop.lr_at(cfg, 0)) == cfg.lr / 2
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)


def test_freeze_encoder_trains_the_decoder_and_heads_only(config_factory) -> None:
    cfg = config_factory(
        "chip={size: 64, empty_share: 0.0}", "warmup_steps=0", "freeze_encoder=true"
    )
    batch = _fixed_batch(cfg)
    model = loop.new_model(cfg)
    optimizer = loop.optimizer_factory(cfg)(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(2):
        loop.train_step(model, optimizer, batch, cfg, step)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    encoder = {k for k in before if k.startswith("net.encoder.")}
    assert encoder and not changed & encoder  # weights and BatchNorm statistics alike
    assert any(k.endswith("weight") for k in changed - encoder)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) < sum(
        p.numel() for p in model.parameters()
    )


def test_encoder_lr_scale_slows_the_encoder_only(config_factory) -> None:
    deltas = {}
    for scale in (1.0, 0.1):
        cfg = config_factory(
            "chip={size: 64, empty_share: 0.0}", "warmup_steps=0", f"encoder_lr_scale={scale}"
        )
        model = loop.new_model(cfg)
        optimizer = loop.optimizer_factory(cfg)(model)
        before = {k: v.clone() for k, v in model.named_parameters()}
        loop.train_step(model, optimizer, _fixed_batch(cfg), cfg, 0)
        assert sorted(g["lr"] for g in optimizer.param_groups) == sorted({cfg.lr * scale, cfg.lr})
        deltas[scale] = {
            k: (v.detach() - before[k]).abs().max().item() for k, v in model.named_parameters()
        }
    # Adam's first step moves a weight with a gradient by about its learning rate
    moved = [k for k, d in deltas[1.0].items() if d > 0.5 * cfg.lr]
    encoder = [k for k in moved if k.startswith("net.encoder.")]
    others = [k for k in moved if not k.startswith("net.encoder.")]
    assert encoder and others
    for k in encoder:
        assert deltas[0.1][k] == pytest.approx(0.1 * deltas[1.0][k], rel=0.05), k
    for k in others:
        assert deltas[0.1][k] == pytest.approx(deltas[1.0][k], rel=1e-4), k


def test_train_step_is_a_function_of_the_state_and_the_step(config_factory) -> None:
    cfg = config_factory("chip={size: 64, empty_share: 0.0}", "mixup={enabled: true, prob: 1.0}")
    batch = _fixed_batch(cfg)
    records, weights = [], []
    for _ in range(2):
        model = loop.new_model(cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        records.append([loop.train_step(model, optimizer, batch, cfg, s) for s in (0, 1)])
        weights.append(model.state_dict())
    assert records[0] == records[1] and all(r["mixup"] for r in records[0])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_train_step_adds_the_weighted_soft_kl_of_the_unlabelled_batch(config_factory) -> None:
    cfg = config_factory("chip={size: 64, empty_share: 0.0}", "self_training={weight: 0.5}")
    batch = _fixed_batch(cfg)
    model = loop.new_model(cfg)
    with torch.no_grad():
        soft = torch.sigmoid(model(batch.images) / cfg.self_training.temperature)
    unlabelled = batches.Batch(batch.images, soft, torch.ones_like(batch.weights))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    record = loop.train_step(model, optimizer, batch, cfg, 0, unlabelled=unlabelled)
    assert "kl" in record and abs(record["kl"]) < 1e-3  # its own predictions: (almost) no KL
    far = batches.Batch(batch.images, 1 - soft, unlabelled.weights)
    assert loop.train_step(model, optimizer, batch, cfg, 1, unlabelled=far)["kl"] > 0.01


@pytest.mark.parametrize(
    "option",
    [
        "ema={enabled: false, decay: 0.5}",
        "ema={enabled: true, decay: 0.5}",
        "encoder_lr_scale=0.1",  # the encoder's own learning-rate group comes back
    ],
)
def test_resume_continues_exactly(config_factory, tmp_path: Path, monkeypatch, option: str) -> None:
    assert_resume_is_exact(config_factory, tmp_path, monkeypatch, option)


def test_ema_saves_the_moving_average_of_the_weights(config_factory, monkeypatch) -> None:
    decay = 0.6
    cfg = config_factory("steps=3", f"ema={{enabled: true, decay: {decay}}}")
    after_each_step: list[dict[str, torch.Tensor]] = []
    real_step = loop.train_step

    def step_and_record(model, *args, **kwargs):
        record = real_step(model, *args, **kwargs)
        after_each_step.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return record

    monkeypatch.setattr(loop, "train_step", step_and_record)
    saved = load_checkpoint(train(cfg, progress=False)["weights"]).state_dict()
    raw = after_each_step[-1]
    floats = [k for k, v in raw.items() if v.is_floating_point()]
    expected = dict(after_each_step[0])  # the average starts as the weights after step 1
    for weights in after_each_step[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in floats}
    assert all(torch.allclose(saved[k], expected[k], atol=1e-6) for k in floats)
    assert not all(torch.equal(saved[k], raw[k]) for k in floats), "saved the raw weights"


def test_resuming_with_ema_needs_a_checkpoint_that_kept_one(config_factory) -> None:
    from open_buildings.errors import CheckpointError

    cfg = config_factory("steps=2")
    train(cfg, progress=False)
    with_ema = cfg.model_copy(
        update={"steps": 3, "ema": cfg.ema.model_copy(update={"enabled": True})}
    )
    with pytest.raises(CheckpointError, match="without a moving average"):
        train(with_ema, resume=True, progress=False)


def test_a_second_run_into_the_same_folder_is_refused(config_factory) -> None:
    cfg = config_factory("steps=2")
    train(cfg, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, progress=False)


def test_mixup_runs_and_the_operating_points_are_stored(config_factory) -> None:
    cfg = config_factory(
        "steps=2",
        "mixup={enabled: true, alpha: 0.4, prob: 1.0}",
        "val=[{name: banepa, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson, "
        "tiles: [39eb0f33]}]",
        "val_every=2",
    )
    result = train(cfg, progress=False)
    assert all(h["mixup"] for h in result["history"])
    val = result["final"]
    assert set(val) >= {"ap", "ap50", "f1", "precision", "recall"} and val["n_truth"] > 0
    # the final checkpoint carries the operating points measured on the validation area
    from open_buildings.models.checkpoint import read_operating_points

    stored = read_operating_points(result["weights"])
    assert stored == result["operating_points"] and stored["measured_on"] == "banepa"
    assert 0 <= stored["best_f1"]["threshold"] <= 1
    assert (Path(cfg.out) / "training_curve.png").stat().st_size > 1000


def test_unknown_config_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="stepz"):
        load_config(TrainConfig, None, ["train=[]", "stepz=3"])


def test_ob_train_command(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: unet_tiny\n"
        f"data_root: {DATA}\n"
        "train: [{name: banepa, imagery: imagery/banepa, labels: labels/banepa_4tiles.geojson}]\n"
        "chip: {size: 64}\nbatch_size: 1\nsteps: 1\nbf16: false\n"
    )
    assert ob_train.main([str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained unet_tiny for 1 steps" in out
    assert (tmp_path / "r" / "weights.safetensors.sha256").exists()
    assert ob_train.main([str(config), "-o", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_bf16_auto_follows_the_cpu_and_is_recorded(config_factory) -> None:
    import yaml

    from open_buildings.pipelines.runtime import native_bf16

    cfg = config_factory("steps=1", "bf16=auto")
    result = train(cfg, progress=False)
    assert result["bf16"] is native_bf16("cpu")
    assert yaml.safe_load((Path(cfg.out) / "config.yaml").read_text())["bf16"] is result["bf16"]


def test_ranks_draw_their_share_of_the_in_memory_batch(config_factory) -> None:
    from open_buildings.training import chips

    cfg = config_factory("chip={size: 64, empty_share: 0.0}", "batch_size=2")
    pool = chips.ScenePool(batches.load_areas(cfg, cfg.train, labelled=True))
    whole = batches.labelled_batch(
        pool, cfg.model_copy(update={"batch_size": 4}), 3, chips.augmenter()
    )
    halves = [batches.labelled_batch(pool, cfg, 3, chips.augmenter(), rank=r) for r in (0, 1)]
    assert torch.equal(whole.images, torch.cat([h.images for h in halves]))
    assert not torch.equal(halves[0].images, halves[1].images)


def test_ob_search_refuses_a_config_that_reads_shards(tmp_path: Path, capsys) -> None:
    from open_buildings.commands import search as ob_search

    train_cfg = tmp_path / "train.yaml"
    train_cfg.write_text(f"shards: {tmp_path}\nval: [{{name: v, imagery: x}}]\n")
    search_cfg = tmp_path / "search.yaml"
    search_cfg.write_text(f"train_config: {train_cfg}\n")
    assert ob_search.main([str(search_cfg), "--out", str(tmp_path / "s")]) == 2
    assert "reads 'shards'" in capsys.readouterr().err
