"""ob-train --nproc 2 on the CPU (gloo, 2 processes) from real chips: the loss trajectory of one
process at twice the batch, and an exact resume after a rank is killed."""

import json
from pathlib import Path

import pytest
import torch

from open_buildings.models.checkpoint import load_checkpoint
from tests.training.test_chips_job import _run

#: Largest relative difference, step by step, between the losses of 2 ranks at batch 4 and of
#: 1 rank at batch 8. The chips, augmentations, learning rates and the loss's normaliser are the
#: same (the first two tested exactly in test_shard_stream, the last below), and BatchNorm takes
#: its statistics over the global batch (training.sync_norm), so only float rounding differs: at
#: step 1 it is 5e-8. Adam's first update turns a rounding difference in a near-zero gradient
#: into a step of up to lr, so later steps part by more, by how much depending on the chips.
#: Measured (2026-12-07, lr 0.01, 8 steps): at most 9e-5, 6.8e-4 and 2.0e-3 on the chips of
#: three successive versions of ob-chips; with each rank's own BatchNorm statistics
#: (sync_batch_norm=false) 5.5e-5 at step 1 and 3.6e-2 by step 3.
TOLERANCE = 5e-3
FIRST_STEP = 1e-5


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "chips"
    _run(out, "chip={size: 96, stride: 32}")
    return out


def _config(tmp_path: Path, chips: Path) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(
        "model: unet_tiny\n"
        f"shards: {chips}\n"
        "chip: {size: 64, empty_share: 0.0}\n"
        "stream: {window: 16, workers: 0}\n"
        "steps: 8\nwarmup_steps: 0\nlr: 0.01\nbf16: false\nthreads: 1\n"
        "checkpoint_every: 2\nval_every: 1000\n"
    )
    return str(path)


def _train(config: str, out: Path, nproc: int, batch: int, *extra: str) -> int:
    """ob-train in a process of its own, as a user runs it: the elastic launcher's rendezvous
    store and signal handlers stay out of the test process."""
    import subprocess
    import sys

    args = [config, "--quiet", "--nproc", str(nproc), "--out", str(out)]
    command = [sys.executable, "-m", "open_buildings.commands.train", *args]
    done = subprocess.run(
        [*command, "-o", f"batch_size={batch}", *extra], capture_output=True, text=True
    )
    _train.stderr = done.stderr
    return done.returncode


def _losses(out: Path) -> list[float]:
    return [h["loss"] for h in json.loads((out / "history.json").read_text())]


def test_two_ranks_at_batch_b_follow_one_rank_at_2b(tmp_path: Path, chips: Path) -> None:
    config = _config(tmp_path, chips)
    assert _train(config, tmp_path / "one", 1, 8) == 0
    assert _train(config, tmp_path / "two", 2, 4) == 0
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    assert one[-1] < 0.9 * one[0]  # it learns, so the trajectories can part
    gaps = [abs(a - b) / a for a, b in zip(one, two)]
    assert gaps[0] < FIRST_STEP and max(gaps) < TOLERANCE, (one, two)
    # each rank's own BatchNorm statistics part the trajectories from the first step, and by far
    # more than rounding does
    assert _train(config, tmp_path / "own", 2, 4, "-o", "sync_batch_norm=false") == 0
    own = [abs(a - b) / a for a, b in zip(one, _losses(tmp_path / "own"))]
    assert own[0] > FIRST_STEP and max(own) > 5 * max(gaps)
    # the checkpoint is rank 0's alone, and both ranks ended with the same weights
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_a_killed_rank_resumes_exactly(tmp_path: Path, chips: Path, monkeypatch) -> None:
    config = _config(tmp_path, chips)
    assert _train(config, tmp_path / "straight", 2, 2, "-o", "steps=4") == 0
    monkeypatch.setenv("OPEN_BUILDINGS_KILL_AT", "checkpoint:1")  # after step 2's checkpoint
    assert _train(config, tmp_path / "killed", 2, 2, "-o", "steps=4") == 1
    assert "ChildFailedError" in _train.stderr
    monkeypatch.delenv("OPEN_BUILDINGS_KILL_AT")
    state = json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and state["stream"]["position"] == 2 * 2 * 2
    assert _train(config, tmp_path / "killed", 2, 2, "-o", "steps=4", "--resume") == 0
    a = load_checkpoint(tmp_path / "straight" / "weights.safetensors").state_dict()
    b = load_checkpoint(tmp_path / "killed" / "weights.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "killed")


def test_a_rank_refusing_its_data_is_an_error_that_says_what_to_do(
    tmp_path: Path, chips: Path, capsys
) -> None:
    config = _config(tmp_path, chips)
    code = _train(config, tmp_path / "bad", 2, 2, "-o", "chip.size=128")
    assert code == 2
    assert "lower chip.size or cut larger chips" in _train.stderr


def test_ranks_normalised_by_their_mean_weight_average_to_the_joint_batch_loss() -> None:
    from open_buildings.models.losses import segmentation_loss

    torch.manual_seed(0)
    logits, target = torch.randn(4, 2, 16, 16), (torch.rand(4, 2, 16, 16) > 0.7).float()
    weight = torch.rand(4, 16, 16) * torch.tensor([1.0, 1.0, 3.0, 0.1])[:, None, None]
    joint = segmentation_loss(logits, target, weight)
    mean_weight = weight.sum() * 2 / 2  # channels x (sum over both ranks) / ranks
    halves = [
        segmentation_loss(
            logits[i : i + 2], target[i : i + 2], weight[i : i + 2], total_weight=mean_weight
        )
        for i in (0, 2)
    ]
    assert torch.allclose((halves[0] + halves[1]) / 2, joint, atol=1e-6)
    plain = [
        segmentation_loss(logits[i : i + 2], target[i : i + 2], weight[i : i + 2]) for i in (0, 2)
    ]
    assert not torch.allclose((plain[0] + plain[1]) / 2, joint, atol=1e-3)  # without it: off


def test_torchrun_runs_the_same_training_as_nproc(tmp_path: Path, chips: Path) -> None:
    import subprocess
    import sys

    config = _config(tmp_path, chips)
    assert _train(config, tmp_path / "nproc", 2, 2, "-o", "steps=2") == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    args = ["-m", "open_buildings.commands.train", config, "--quiet", "-o", "steps=2"]
    args += ["-o", "batch_size=2", "--out", str(tmp_path / "torchrun")]
    subprocess.run([*torchrun, *args], check=True, capture_output=True)
    a = load_checkpoint(tmp_path / "nproc" / "weights.safetensors").state_dict()
    b = load_checkpoint(tmp_path / "torchrun" / "weights.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
