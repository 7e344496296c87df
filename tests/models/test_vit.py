"""Unit tests of the ViT encoder itself (open_buildings.models.vit).

Position-embedding resampling is checked against timm's ``resample_abs_pos_embed``; attention
and a block-free encoder against outputs computed by hand.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from open_buildings.errors import ConfigError
from open_buildings.models import CHANNELS, build_model
from open_buildings.models.vit import (
    SIGLIP_TINY,
    Attention,
    ViTConfig,
    ViTEncoder,
    feature_layers,
    resample_pos_embed,
)


def _config(**changes: object) -> ViTConfig:
    return dataclasses.replace(SIGLIP_TINY, **changes)


def _encoder(**changes: object) -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(_config(**changes)).eval()


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Position embeddings


@pytest.mark.parametrize("grid", [(7, 7), (3, 3), (2, 6), (9, 5)])
def test_resample_pos_embed_equals_timm(grid: tuple[int, int]) -> None:
    pos_embed = pytest.importorskip("timm.layers.pos_embed")
    pos = _image(1, 16, 24)
    ours = resample_pos_embed(pos, grid)
    # timm's default antialias=True uses another bicubic kernel (a=-0.5); the encoder, like
    # transformers' interpolate_pos_encoding, uses plain bicubic.
    theirs = pos_embed.resample_abs_pos_embed(pos, list(grid), num_prefix_tokens=0, antialias=False)
    assert ours.shape == (1, grid[0] * grid[1], 24)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_resample_pos_embed_same_grid_and_errors() -> None:
    pos = _image(1, 16, 8)
    assert resample_pos_embed(pos, (4, 4)) is pos
    with pytest.raises(ValueError, match="15 tokens are not a square grid"):
        resample_pos_embed(pos[:, :15], (4, 4))


def test_encoder_adds_the_resampled_grid_for_any_input_shape() -> None:
    encoder = _encoder()
    x = _image(1, 3, 48, 112)
    with torch.no_grad():
        tokens, grid = encoder.embed(x)
        patches = encoder.patch_embed(x).flatten(2).transpose(1, 2)
    assert grid == (3, 7)
    expected = patches + resample_pos_embed(encoder.pos_embed, grid)
    torch.testing.assert_close(tokens, expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# Outputs computed by hand


def test_attention_equals_softmax_by_hand() -> None:
    torch.manual_seed(0)
    width, heads = 12, 3
    attention = Attention(width, heads).eval()
    x = _image(2, 5, width)
    with torch.no_grad():
        out = attention(x)
        q, k, v = attention.qkv(x).split(width, dim=-1)
        d = width // heads
        per_head = []
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(d), -1)
            per_head.append(weights @ v[..., cols])
        expected = attention.proj(torch.cat(per_head, dim=-1))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_encoder_with_identity_blocks_is_normed_patch_embedding() -> None:
    encoder = _encoder()
    with torch.no_grad():
        for block in encoder.blocks:
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()
        encoder.norm.weight.copy_(torch.linspace(0.5, 1.5, 64))
        encoder.norm.bias.fill_(0.25)
    x = _image(1, 3, 32, 48)
    with torch.no_grad():
        out = encoder(x)
        # Patchify by hand: (1, 3, 32, 48) -> 2x3 patches of 3*16*16 values, row-major.
        patches = F.unfold(x, kernel_size=16, stride=16).transpose(1, 2)
        embedded = patches @ encoder.patch_embed.weight.reshape(64, -1).T
        embedded = (
            embedded + encoder.patch_embed.bias + resample_pos_embed(encoder.pos_embed, (2, 3))
        )
        mean = embedded.mean(-1, keepdim=True)
        var = embedded.var(-1, unbiased=False, keepdim=True)
        expected = (embedded - mean) / torch.sqrt(var + 1e-6) * encoder.norm.weight + 0.25
    assert out.grid == (2, 3)
    torch.testing.assert_close(out.tokens, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.features[-1], expected, atol=1e-5, rtol=0)
    # Identity blocks: every earlier feature is the un-normed embedding.
    for feature in out.features[:-1]:
        torch.testing.assert_close(feature, embedded, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize("size", [(16, 16), (32, 48), (80, 32), (112, 64)])
def test_encoder_any_multiple_of_the_patch(size: tuple[int, int]) -> None:
    encoder = _encoder()
    with torch.no_grad():
        out = encoder(_image(2, 3, *size))
    rows, cols = size[0] // 16, size[1] // 16
    assert out.grid == (rows, cols)
    assert out.tokens.shape == (2, rows * cols, 64)
    assert [f.shape for f in out.features] == [(2, rows * cols, 64)] * 4
    assert torch.isfinite(out.tokens).all()


def test_encoder_refuses_sides_off_the_patch_grid() -> None:
    with pytest.raises(ValueError, match=r"multiples of the patch size 16, got \(20, 32\)"):
        _encoder()(_image(1, 3, 20, 32))


@pytest.mark.parametrize(("patch", "size"), [(12, (50, 50)), (8, (45, 37)), (14, (30, 71))])
def test_model_pads_for_a_patch_override(patch: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model("vit_siglip_tiny", patch=patch, pretrain_size=4 * patch).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size))
    assert out.shape == (1, len(CHANNELS), *size)
    assert torch.isfinite(out).all()


def test_class_token_variant_keeps_it_out_of_the_features() -> None:
    encoder = _encoder(class_token=True, pre_norm=True, act="quick_gelu", ln_eps=1e-5)
    assert encoder.pos_embed.shape == (1, 1 + 16, 64)
    with torch.no_grad():
        out = encoder(_image(2, 3, 32, 64))
    assert out.tokens.shape == (2, 1 + 8, 64)
    assert all(f.shape == (2, 8, 64) for f in out.features)
    assert torch.equal(out.features[-1], out.tokens[:, 1:])


# ----------------------------------------------------------------------------------------------
# feature_layers and config validation


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (1, (0, 0, 0, 0)),
        (2, (0, 0, 1, 1)),
        (4, (0, 1, 2, 3)),
        (12, (2, 5, 8, 11)),
        (27, (6, 13, 19, 26)),
    ],
)
def test_default_feature_layers(depth: int, expected: tuple[int, ...]) -> None:
    assert feature_layers(_config(depth=depth)) == expected


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_shallow_net_still_feeds_four_maps(depth: int) -> None:
    torch.manual_seed(0)
    model = build_model("vit_siglip_tiny", depth=depth).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, len(CHANNELS), 32, 32)


def test_explicit_feature_layers_pick_those_blocks() -> None:
    deep = _encoder(depth=6, feature_layers=(0, 2, 3, 4))
    with torch.no_grad():
        out = deep(_image(1, 3, 32, 32))
        tokens, _ = deep.embed(_image(1, 3, 32, 32))
        after = []
        for block in deep.blocks:
            tokens = block(tokens)
            after.append(tokens)
    for feature, index in zip(out.features, (0, 2, 3, 4), strict=True):
        torch.testing.assert_close(feature, after[index], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ((0, 1, 2), r"4 increasing block indices, got \[0, 1, 2\]"),
        ((2, 1, 3, 3), r"4 increasing block indices, got \[2, 1, 3, 3\]"),
        ((1, 1, 2, 3), r"4 increasing block indices"),
        ((-1, 0, 1, 2), r"4 increasing block indices"),
        ((0, 1, 2, 4), r"name a block past the depth \(4 blocks, indices 0 to 3\)"),
    ],
)
def test_bad_feature_layers_are_config_errors(layers: tuple[int, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        feature_layers(_config(feature_layers=layers))
    with pytest.raises(ConfigError, match=message):
        build_model("vit_siglip_tiny", feature_layers=list(layers))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"heads": 3}, r"heads \(3\) must divide width \(64\)"),
        ({"act": "relu"}, r"act must be one of gelu_tanh, quick_gelu, gelu, got 'relu'"),
        ({"patch": 128}, r"patch \(128\) must be >= 1 and at most pretrain_size \(64\)"),
        ({"patch": 0}, r"patch \(0\) must be >= 1"),
        ({"depth": 0}, r"depth must be >= 1, got 0"),
    ],
)
def test_config_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ViTEncoder(_config(**changes))
    with pytest.raises(ConfigError, match=message):
        build_model("vit_siglip_tiny", **changes)
