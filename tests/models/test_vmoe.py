"""V-MoE models: placement of the expert layers, aux losses in the model, the capacity knob."""

from __future__ import annotations

import pytest
import torch

from open_buildings.errors import ConfigError
from open_buildings.models import build_model, load_checkpoint, save_checkpoint
from open_buildings.models.moe import MoEMlp, expert_capacity
from open_buildings.models.vit import Mlp
from open_buildings.models.vmoe import (
    VMoEConfig,
    measure_expert_compute,
    moe_blocks,
    moe_layers,
    set_capacity,
)


def _tiny(**overrides):
    torch.manual_seed(0)
    return build_model("vmoe_tiny", **overrides)


def test_placement_follows_v_moe_layouts() -> None:
    assert moe_blocks(VMoEConfig(depth=12)) == (1, 3, 5, 7, 9, 11)  # "Every 2"
    assert moe_blocks(VMoEConfig(depth=12, moe_placement="last_n", moe_last_n=2)) == (9, 11)
    assert moe_blocks(VMoEConfig(depth=8, moe_placement="last_n", moe_last_n=3)) == (3, 5, 7)
    with pytest.raises(ConfigError, match="moe_last_n must be between 1 and 6"):
        moe_blocks(VMoEConfig(depth=12, moe_placement="last_n", moe_last_n=7))
    with pytest.raises(ConfigError, match="moe_placement must be one of every_other, last_n"):
        moe_blocks(VMoEConfig(moe_placement="every_third"))


def test_vmoe_s16_is_vit_s16_with_8_experts_top2_every_other_block() -> None:
    with torch.device("meta"):
        model = build_model("vmoe_s16")
    blocks = model.net.encoder.blocks
    assert len(blocks) == 12 and model.input_spec.divisor == 16
    for i, block in enumerate(blocks):
        if i % 2:
            layer = block.mlp
            assert isinstance(layer, MoEMlp)
            assert (layer.num_experts, layer.k, layer.width, layer.hidden) == (8, 2, 384, 1536)
            assert layer.noise_std == 1 / 8
            assert (layer.importance_weight, layer.load_weight) == (0.005, 0.005)
            assert tuple(layer.w1.shape) == (8, 384, 1536)  # experts as batched weights
        else:
            assert isinstance(block.mlp, Mlp)


def test_last_n_placement_builds_only_those_layers() -> None:
    model = _tiny(moe_placement="last_n", moe_last_n=1)
    kinds = [type(b.mlp).__name__ for b in model.net.encoder.blocks]
    assert kinds == ["Mlp", "Mlp", "Mlp", "MoEMlp"]
    with pytest.raises(ConfigError, match="k <= num_experts"):
        _tiny(k=5)


def test_model_aux_loss_sums_the_layers_in_training_only() -> None:
    model = _tiny().train()
    x = torch.rand(2, 3, 64, 64)
    model(x)
    layers = moe_layers(model)
    assert len(layers) == 2
    aux = model.aux_loss()
    torch.testing.assert_close(aux, layers[0].last_aux_loss + layers[1].last_aux_loss)
    assert float(aux.detach()) > 0
    aux.backward()  # the aux losses train the routers
    assert all(layer.router.grad.abs().sum() > 0 for layer in layers)
    model.eval()
    with torch.no_grad():
        model(x)
    assert model.aux_loss() is None


def test_an_image_does_not_depend_on_its_batch() -> None:
    model = _tiny(capacity_factor_eval=0.5).eval()
    x = torch.rand(3, 3, 48, 64)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_set_capacity_changes_every_layer_and_survives_a_checkpoint(tmp_path) -> None:
    model = _tiny().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
        assert set_capacity(model, 0.25) == 2
        assert [m.capacity_factor_eval for m in moe_layers(model)] == [0.25, 0.25]
        reduced = model(x)
    assert not torch.allclose(full, reduced)  # tokens were dropped
    assert all((m.last_routing.slot < 0).any() for m in moe_layers(model))
    assert model.config["capacity_factor_eval"] == 0.25
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert [m.capacity_factor_eval for m in moe_layers(loaded)] == [0.25, 0.25]
    with torch.no_grad():
        assert torch.equal(loaded(x), reduced)


def test_set_capacity_refuses_models_without_experts_and_bad_values() -> None:
    unet = build_model("unet_tiny")
    with pytest.raises(ConfigError, match="'unet_tiny' has no mixture-of-experts layers"):
        set_capacity(unet, 0.5)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="must be a positive number"):
            set_capacity(_tiny(), bad)


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.0])
def test_expert_compute_fraction_at_a_capacity(factor: float) -> None:
    model = _tiny()
    x = torch.rand(2, 3, 64, 64)  # 16 tokens per image (one routing group each), E=4, k=2
    report = measure_expert_compute(model, x, factor)
    capacity = expert_capacity(16, 4, 2, factor)
    assert capacity == round(8 * factor)
    layers, groups = 2, 2
    assert report.choices == layers * groups * 16 * 2
    assert report.slots == layers * groups * 4 * capacity
    assert report.flops == report.slots * 4 * 64 * 128
    assert report.flops_fraction == pytest.approx(capacity / 8)
    assert report.served <= min(report.slots, report.choices)
    assert report.served_fraction <= report.flops_fraction
    # the model is left as it was
    assert model.training
    assert [m.capacity_factor_eval for m in moe_layers(model)] == [1.05, 1.05]
    assert model.config["capacity_factor_eval"] == 1.05


def test_lower_capacity_serves_fewer_choices() -> None:
    model = _tiny()
    x = torch.rand(2, 3, 64, 64)
    served = [measure_expert_compute(model, x, f).served for f in (0.25, 0.5, 1.0, 2.0)]
    assert served == sorted(served) and served[0] < served[-1]
    assert served[-1] == 2 * 2 * 16 * 2  # capacity 2.0: every choice served


def test_einsum_dispatch_gives_the_same_model_output() -> None:
    index = _tiny(capacity_factor_eval=0.5).eval()
    einsum = _tiny(capacity_factor_eval=0.5, dispatch="einsum").eval()
    einsum.load_state_dict(index.state_dict())
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(index(x), einsum(x), rtol=1e-4, atol=1e-5)
