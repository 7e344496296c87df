"""ob-search: the PNAS cell space, decoder cells that ob-infer's runtime runs, the surrogate, the
budget plan, and a tiny search end to end on real Banepa tiles that resumes after a stop."""

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from open_buildings.commands import search as ob_search
from open_buildings.errors import ConfigError
from open_buildings.models.checkpoint import save_checkpoint
from open_buildings.models.registry import build_model
from open_buildings.models.search_cell import check_cell
from open_buildings.training import search_space as space
from open_buildings.training.search import plan_from_budget
from open_buildings.training.search_report import pareto_front
from open_buildings.training.search_surrogate import Surrogate, rank_correlation

DATA = Path(__file__).resolve().parents[1] / "data"


def test_the_space_counts_cells_as_pnas_does() -> None:
    # 2 inputs x 6 ops = 12 halves; a block is an unordered pair of them: 12 * 13 / 2
    assert len(space.level_one()) == 78
    assert len(set(space.level_one())) == 78
    # the second block may also read the first: 3 x 6 = 18 halves -> 171 children
    parent = space.level_one()[5]
    children = space.expand(parent)
    assert len(children) == 171 and all(c[:1] == parent for c in children)
    # op1(a) + op2(b) is op2(b) + op1(a): one cell
    assert space.canonical_block(1, "sep3", 0, "avg3") == space.canonical_block(
        0, "avg3", 1, "sep3"
    )
    cell = ((0, "avg3", 1, "sep3"), (0, "identity", 2, "dil3"))
    assert space.from_text(space.to_text(cell)) == cell
    rng = np.random.default_rng(0)
    drawn = [space.random_cell(rng, 3) for _ in range(20)]
    assert all(len(c) == 3 and check_cell(c) == c for c in drawn)


def test_a_cell_is_refused_when_it_reads_a_later_block_or_an_unknown_op() -> None:
    with pytest.raises(ConfigError, match="earlier block"):
        check_cell([[0, "sep3", 2, "avg3"]])
    with pytest.raises(ConfigError, match="unknown op"):
        check_cell([[0, "conv7", 1, "avg3"]])
    with pytest.raises(ConfigError, match="decoder_attention_type"):
        build_model(
            "unet_tiny", decoder_cell=[[0, "sep3", 1, "avg3"]], decoder_attention_type="scse"
        )


def test_a_searched_decoder_runs_in_ob_infers_runtime_like_pytorch(tmp_path: Path) -> None:
    from open_buildings.pipelines.onnx_backend import export_onnx
    from open_buildings.pipelines.onnx_model import OnnxModel

    cell = [[0, "sep5", 1, "max3"], [2, "dil3", 0, "identity"], [1, "avg3", 3, "sep3"]]
    model = build_model("unet_tiny", decoder_cell=cell).eval()
    plain = build_model("unet_tiny")
    assert model.config["decoder_cell"] == cell
    assert sum(p.numel() for p in model.parameters()) != sum(p.numel() for p in plain.parameters())
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        want = model(x).numpy()
    got = OnnxModel(export_onnx(model, tmp_path / "cell.onnx"))(x.numpy())
    assert got.shape == want.shape == (1, 2, 96, 128)
    assert np.abs(got - want).max() < 1e-3
    # the cell travels in the checkpoint: it rebuilds with the same weights
    from open_buildings.models.checkpoint import load_checkpoint

    save_checkpoint(model, tmp_path / "cell.safetensors")
    again = load_checkpoint(tmp_path / "cell.safetensors").eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_the_surrogate_ranks_unseen_cells_of_a_learnable_score() -> None:
    # a score the cell encoding determines: separable convs help, pooling hurts
    def score(cell):
        ops = [op for b in cell for op in (b[1], b[3])]
        return ops.count("sep3") + 0.5 * ops.count("sep5") - ops.count("max3")

    cells = space.level_one()
    rng = np.random.default_rng(1)
    unseen = [space.random_cell(rng, 2) for _ in range(40)]
    surrogate = Surrogate(max_blocks=2, members=3).fit(cells, [score(c) for c in cells])
    rho = rank_correlation(surrogate.predict(unseen), [score(c) for c in unseen])
    assert rho is not None and rho > 0.7
    assert rank_correlation([1, 2], [1, 2]) is None  # too few to rank


def test_the_surrogate_sees_which_input_each_op_reads() -> None:
    # counting inputs and ops apart made these two cells one point (the first search's surrogate
    # then scored most children of a parent alike)
    a, b = ((0, "sep3", 1, "dil3"),), ((0, "dil3", 1, "sep3"),)
    assert not np.array_equal(space.features(a, 3), space.features(b, 3))
    no_skip = ((0, "sep3", 0, "sep3"), (0, "dil3", 2, "sep3"))
    assert space.features(no_skip, 3)[-2] == 0 and space.features(a, 3)[-2] == 1


def test_the_searched_cell_is_a_registered_model_ob_train_can_build() -> None:
    from open_buildings.models.search_cell import CellDecoderBlock
    from open_buildings.models.unet import PNAS_DECODER_CELL

    model = build_model("unet_efficientnet_lite1_pnas")
    assert model.config["decoder_cell"] == [list(b) for b in PNAS_DECODER_CELL]
    assert all(isinstance(b, CellDecoderBlock) for b in model.net.decoder.blocks)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_the_budget_sets_the_beam_and_the_depth() -> None:
    plan = plan_from_budget(
        3600, 1200, 10.0, max_blocks=3, random_baseline=True, reserve_s=400
    )  # 2000 s left; a later candidate with its random twin costs 26 s; 2 levels
    assert (plan.beam, plan.max_blocks) == (38, 3)
    tight = plan_from_budget(3600, 3500, 10.0, max_blocks=3, random_baseline=True, reserve_s=50)
    assert (tight.beam, tight.max_blocks) == (1, 2)  # 50 s: one more level of one cell
    none = plan_from_budget(600, 600, 10.0, max_blocks=3, random_baseline=True, reserve_s=0)
    assert none.max_blocks == 1


def test_the_frontier_keeps_only_unbeaten_points() -> None:
    points = [
        {"ms_per_tile": 10, "ap50": 0.2},
        {"ms_per_tile": 12, "ap50": 0.1},  # slower and worse: off the frontier
        {"ms_per_tile": 15, "ap50": 0.3},
        {"ms_per_tile": 9, "ap50": 0.05},
    ]
    assert [p["ms_per_tile"] for p in pareto_front(points)] == [9, 10, 15]


def test_a_spent_budget_stops_the_search_and_says_where(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from open_buildings.training.search import run_search

    cfg = SimpleNamespace(
        ops=["avg3", "identity"], seed=0, max_blocks=2, beam=None, random_baseline=True,
        surrogate_members=2, cost=SimpleNamespace(rounds=1),
    )  # fmt: skip
    scores = {"ap50": 0.5, "ap": 0.2, "best_f1": 0.5, "f1": 0.4, "train_seconds": 0.3, "params": 1}
    trained = []

    def train(cell, seed):
        time.sleep(0.3)
        trained.append(cell)
        return scores

    summary = run_search(
        cfg,
        tmp_path,
        train=train,
        cost=lambda cells, done: [done(space.to_text(c), 5.0, 4.0) for c in cells],
        budget_s=1.0,
    )
    assert summary["stopped"] == "the budget ran out in level 1"
    assert 1 <= len(trained) <= 5 and summary["trained"]["pnas"] >= summary["trained"]["random"]
    assert summary["costs"]["reference_ms"] == 4.0


def _configs(tmp_path: Path) -> Path:
    encoder = build_model("unet_tiny")
    save_checkpoint(encoder, tmp_path / "encoder.safetensors")
    train = {
        "model": "unet_tiny",
        "data_root": str(DATA),
        "train": [
            {
                "name": "banepa",
                "imagery": "imagery/banepa",
                "labels": "labels/banepa_4tiles.geojson",
            }
        ],
        "val": [
            {
                "name": "banepa_val",
                "imagery": "imagery/banepa",
                "labels": "labels/banepa_4tiles.geojson",
                "tiles": ["39eb0f33"],
            }
        ],
        "chip": {"size": 64, "empty_share": 0.0},
        "steps": 10,
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    search = {
        "train_config": "train.yaml",
        "encoder_from": str(tmp_path / "encoder.safetensors"),
        "ops": ["avg3", "identity"],
        "max_blocks": 2,
        "beam": 2,
        "budget_minutes": 30,
        "proxy": {"chip": 64, "batches": 2, "batch_size": 2, "steps": 2},
        "cost": {"tile": 64, "rounds": 2, "group": 8},
        "threads": 2,
        "out": "search",
    }
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(search))
    return tmp_path / "search.yaml"


def _rows(out: Path) -> list[dict]:
    with (out / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_ob_search_runs_end_to_end_and_resumes(tmp_path: Path, capsys, monkeypatch) -> None:
    from open_buildings.training import search_proxy

    config = _configs(tmp_path)
    out = tmp_path / "search"
    real, calls = search_proxy.train_candidate, []

    def killed_after_five(*args, **kwargs):
        if len(calls) == 5:
            raise RuntimeError("killed")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(search_proxy, "train_candidate", killed_after_five)
    with pytest.raises(RuntimeError, match="killed"):
        ob_search.main([str(config)])
    monkeypatch.setattr(search_proxy, "train_candidate", real)
    first = _rows(out)
    assert len(first) == 5
    # the same folder again needs --resume
    assert ob_search.main([str(config)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert ob_search.main([str(config), "--resume"]) == 0
    rows = _rows(out)
    assert rows[: len(first)] == first  # what was recorded is kept, not trained again
    kinds = [r["kind"] for r in rows]
    # 10 one-block cells of 2 inputs x 2 ops, then K = 2 two-block children; as many random
    assert kinds.count("pnas") == 12 and kinds.count("random") == 12
    assert len({(r["kind"], r["cell"]) for r in rows}) == len(rows)
    assert all(0.0 <= float(r["ap50"]) <= 1.0 for r in rows)
    surrogate = json.loads((out / "surrogate.json").read_text())
    assert [lv["level"] for lv in surrogate["levels"]] == [2]
    assert surrogate["levels"][0]["trained"] == 2 and surrogate["levels"][0]["children"] > 2
    pareto = json.loads((out / "pareto.json").read_text())
    assert len(pareto["pnas"]["points"]) == 12 and len(pareto["random"]["points"]) == 12
    assert all(p["ms_per_tile"] > 0 for p in pareto["pnas"]["points"])
    assert pareto["reference"]["ms_per_tile"] > 0 and 0 <= pareto["reference"]["ap50"] <= 1
    assert json.loads((out / "reference.json").read_text())["params"] > 0
    assert (out / "pareto.png").stat().st_size > 10_000
    top = yaml.safe_load((out / "top1.yaml").read_text())
    assert top["model"] == "unet_tiny" and top["model_overrides"]["decoder_cell"]
    assert [b for b in top["model_overrides"]["decoder_cell"]][0][1] in ("avg3", "identity")
    # the top config trains with ob-train as it is
    from open_buildings.config import load_config
    from open_buildings.training.config import TrainConfig

    cfg = load_config(TrainConfig, out / "top1.yaml", ["steps=1", f"out={tmp_path / 't'}"])
    model = build_model(cfg.model, **cfg.model_overrides)
    assert model.config["decoder_cell"] == top["model_overrides"]["decoder_cell"]


def test_a_training_config_without_validation_areas_is_refused(tmp_path: Path, capsys) -> None:
    config = _configs(tmp_path)
    train = yaml.safe_load((tmp_path / "train.yaml").read_text())
    del train["val"]
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    assert ob_search.main([str(config)]) == 2
    assert "no 'val' areas" in capsys.readouterr().err
    assert not (tmp_path / "search").exists()
