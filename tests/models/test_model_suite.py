"""One suite for every registered model (as smp's tests/models/base.py does per family).

Sizes are tiny (3 to 160 px) so the whole suite runs in seconds on two CPU cores. bf16
autocast of the depthwise/attention encoders costs seconds per shape on CPUs without native
bf16, so those cases are marked slow; every model keeps forward, shape and band checks here.
"""

from __future__ import annotations

import pytest
import torch

from open_buildings.models import (
    CHANNELS,
    BuildingModel,
    build_model,
    list_models,
    load_checkpoint,
    save_checkpoint,
)
from open_buildings.models.change_unet import CHANGE_CHANNELS
from open_buildings.models.registry import get_entry


def _param_count(name: str) -> int:
    # Built on the meta device (no memory, no init); a builder that needs real tensors (smp's
    # MiT calls .item()) is small enough to build for real.
    try:
        with torch.device("meta"):
            return build_model(name).num_parameters()
    except RuntimeError:
        return build_model(name).num_parameters()


MODELS = list_models()
#: Models over 60M parameters (SigLIP So400m, OWL-ViT B): every case is slow-marked, so the
#: default suite stays quick; `make test-all` runs them.
HEAVY = {name for name in MODELS if _param_count(name) > 60_000_000}
SLOW_BF16 = {"unet_efficientnet_lite0", "unet_mit_b0"} | {
    n for n in MODELS if n.startswith("change_unet_lite0")
}  # Lite0 encoders (depthwise convs)
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODELS]
#: Models cheap enough to try more sizes on; the others get one square and one odd size.
CHEAP = {"unet_tiny", "unet_resnet18"}

#: bf16 keeps 8 mantissa bits (relative rounding 2**-9 per op); through a few dozen layers of a
#: randomly initialised net that compounds to a few percent. Measured: 0.6-2% relative L2 and
#: <= 0.023 in probability at 32x32, so the bounds below leave a 2x margin.
BF16_REL_L2 = 0.05
BF16_PROB_ATOL = 0.05


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _bands(name: str) -> int:
    """The model's input bands: 3 (RGB), or 6 for the two-date change models."""
    return get_entry(name).input_spec.bands


@pytest.mark.parametrize("name", PARAMS)
def test_forward_shape_any_size(name: str, built_models: dict[str, BuildingModel]) -> None:
    model = built_models[name].eval()
    sizes = [(64, 64), (45, 37)]
    if name in CHEAP:
        sizes += [(70, 45), (96, 160), (5, 3)]
    with torch.no_grad():
        for h, w in sizes:
            out = model(_image(1, _bands(name), h, w))
            assert out.shape == (1, len(model.output_channels), h, w), (h, w)
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", PARAMS)
def test_wrong_band_count_is_a_clear_error(
    name: str, built_models: dict[str, BuildingModel]
) -> None:
    model = built_models[name]
    bands = _bands(name)
    with pytest.raises(ValueError, match=rf"expects {bands} bands.*, got 4; map the bands"):
        model(_image(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, bands, H, W\)"):
        model(_image(bands, 32, 32))
    with pytest.raises(ValueError, match="floats scaled to"):
        model(torch.zeros(1, bands, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("name", PARAMS)
def test_contract_attributes(name: str, built_models: dict[str, BuildingModel]) -> None:
    model = built_models[name]
    assert model.name == name
    if name.startswith("change_"):  # two dates in, building per date and change out
        assert model.output_channels == CHANGE_CHANNELS and model.input_spec.bands == 6
    else:
        assert model.output_channels == CHANNELS and model.input_spec.bands == 3
    assert model.input_spec.pixel_size_m == 0.5
    assert model.num_parameters() > 0


@pytest.mark.parametrize("name", PARAMS)
def test_backward_reaches_every_used_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).train()
    out = model(_image(2, _bands(name), 32, 32))
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "a parameter got no gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", PARAMS)
def test_eval_is_deterministic(name: str, built_models: dict[str, BuildingModel]) -> None:
    model = built_models[name].eval()
    x = _image(1, _bands(name), 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", PARAMS)
def test_save_load_round_trip(name: str, built_models: dict[str, BuildingModel], tmp_path) -> None:
    model = built_models[name].eval()
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert loaded.name == name and loaded.config == model.config
    x = _image(1, _bands(name), 32, 24)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BF16 | HEAVY else n for n in MODELS],
)
def test_bf16_autocast_close_to_fp32(name: str, built_models: dict[str, BuildingModel]) -> None:
    model = built_models[name].eval()
    x = _image(1, _bands(name), 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.shape == ref.shape
    low = low.float()
    assert float((low - ref).norm() / ref.norm()) <= BF16_REL_L2
    assert float((low.sigmoid() - ref.sigmoid()).abs().max()) <= BF16_PROB_ATOL
