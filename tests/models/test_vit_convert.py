"""SigLIP/PaliGemma checkpoints converted into ViTEncoder reproduce the source models' features.

The references are independent implementations with random weights: transformers'
``SiglipVisionModel`` (Hugging Face safetensors layout) and timm's ``VisionTransformer`` loaded by
timm's own big_vision npz reader (``_load_weights``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from open_buildings.errors import CheckpointError
from open_buildings.models import build_model
from open_buildings.models.convert.siglip import (
    default_heads,
    load_siglip,
    read_siglip_checkpoint,
    siglip_config_from_checkpoint,
)
from open_buildings.models.registry import load_pretrained
from open_buildings.models.vit import SIGLIP_TINY, ViTEncoder

ATOL = 1e-5
WIDTH, HEADS, HEAD_DIM, MLP, PATCH, DEPTH, GRID = 64, 4, 16, 128, 16, 4, 4
#: Tensors of the HF MAP head (probe, attention in/out, layernorm, MLP): reported unused.
HF_HEAD_TENSORS = 11


def _image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _encoder(**changes: object) -> ViTEncoder:
    torch.manual_seed(1)
    return ViTEncoder(dataclasses.replace(SIGLIP_TINY, **changes)).eval()


# ----------------------------------------------------------------------------------------------
# Hugging Face layout


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory):
    """A random tiny SiglipVisionModel saved as safetensors (with its config.json)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        image_size=GRID * PATCH,
        patch_size=PATCH,
    )
    model = transformers.SiglipVisionModel(config).eval()
    with torch.no_grad():
        # Non-trivial LayerNorm scales and biases, so a swapped or dropped tensor shows.
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    folder = tmp_path_factory.mktemp("siglip_hf")
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder / "model.safetensors"


def _hf_reference(model, x: torch.Tensor):
    with torch.no_grad():
        return model(x, output_hidden_states=True, interpolate_pos_encoding=True)


def _assert_matches_hf(encoder: ViTEncoder, model, size: int) -> None:
    x = _image(size)
    ref = _hf_reference(model, x)
    with torch.no_grad():
        out = encoder(x)
    assert out.grid == (size // PATCH, size // PATCH)
    torch.testing.assert_close(out.tokens, ref.last_hidden_state, atol=ATOL, rtol=0)
    # Features: blocks 0..2 before the final norm, block 3 after it (= last_hidden_state).
    assert encoder.feature_layers == (0, 1, 2, 3)
    for i in range(3):
        torch.testing.assert_close(out.features[i], ref.hidden_states[i + 1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.features[3], ref.last_hidden_state, atol=ATOL, rtol=0)


@pytest.mark.parametrize("size", [GRID * PATCH, 7 * PATCH])
def test_hf_checkpoint_reproduces_transformers(hf_model, size: int) -> None:
    model, path = hf_model
    encoder = _encoder()
    report = load_siglip(encoder, path)
    assert report == {"loaded": len(encoder.state_dict()), "unused": HF_HEAD_TENSORS}
    _assert_matches_hf(encoder, model, size)


def test_hf_position_grid_is_resampled_to_the_model(hf_model) -> None:
    model, path = hf_model
    encoder = _encoder(pretrain_size=6 * PATCH)
    load_siglip(encoder, path)
    assert encoder.pos_embed.shape == (1, 36, WIDTH)
    # The 6x6 grid made at load time is what transformers interpolates to at 96 px.
    _assert_matches_hf(encoder, model, 6 * PATCH)


def _write_with_prefix(source: Path, target: Path, prefix: str) -> int:
    tensors = {prefix + k: v for k, v in load_file(source).items()}
    extras = {
        "language_model.model.embed_tokens.weight": torch.randn(10, 8),
        "language_model.model.layers.0.mlp.up_proj.weight": torch.randn(8, 8),
        "multi_modal_projector.linear.weight": torch.randn(8, WIDTH),
        "text_model.embeddings.token_embedding.weight": torch.randn(10, WIDTH),
        "logit_scale": torch.ones(1),
    }
    save_file({**tensors, **extras}, target)
    return len(extras)


@pytest.mark.parametrize(
    "prefix", ["vision_tower.vision_model.", "model.vision_tower.", "vision_model."]
)
def test_paligemma_and_siglip_prefixes_load_identically(hf_model, tmp_path, prefix: str) -> None:
    model, path = hf_model
    bare = read_siglip_checkpoint(path, heads=HEADS)
    renamed = tmp_path / "paligemma.safetensors"
    extras = _write_with_prefix(path, renamed, prefix)
    checkpoint = read_siglip_checkpoint(renamed, heads=HEADS)
    # The bare file also has transformers' config.json beside it (ln_eps); the copy has none.
    assert checkpoint.fields == {k: v for k, v in bare.fields.items() if k != "ln_eps"}
    assert checkpoint.state_dict.keys() == bare.state_dict.keys()
    for key, value in bare.state_dict.items():
        assert torch.equal(checkpoint.state_dict[key], value), key
    assert "language_model.model.embed_tokens.weight" in checkpoint.unused
    assert f"{prefix}head.probe" in checkpoint.unused
    encoder = _encoder()
    assert load_siglip(encoder, renamed) == {
        "loaded": len(encoder.state_dict()),
        "unused": extras + HF_HEAD_TENSORS,
    }
    _assert_matches_hf(encoder, model, GRID * PATCH)


def test_sharded_index_loads_like_one_file(hf_model, tmp_path) -> None:
    model, path = hf_model
    tensors = load_file(path)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2]}
    shards["model-00002-of-00002.safetensors"] = names[1::2]
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / shard)
    index = tmp_path / "model.safetensors.index.json"
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    encoder = _encoder()
    assert load_siglip(encoder, index)["unused"] == HF_HEAD_TENSORS
    _assert_matches_hf(encoder, model, GRID * PATCH)


def test_config_from_hf_checkpoint_reads_heads_from_config_json(hf_model, tmp_path) -> None:
    _, path = hf_model
    config = siglip_config_from_checkpoint(path)
    expected = dict(width=WIDTH, depth=DEPTH, mlp_dim=MLP, heads=HEADS, patch=PATCH)
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.pretrain_size == GRID * PATCH
    assert config.class_token is False and config.act == "gelu_tanh"
    # Without a config.json the heads come from the argument, else the published-width rule.
    alone = tmp_path / "weights.safetensors"
    alone.write_bytes(path.read_bytes())
    assert siglip_config_from_checkpoint(alone).heads == default_heads(WIDTH) == 1
    assert siglip_config_from_checkpoint(alone, heads=8).heads == 8
    assert siglip_config_from_checkpoint(alone, heads=4, decoder_channels=16).decoder_channels == 16


def test_default_heads_of_published_widths() -> None:
    assert [default_heads(w) for w in (384, 768, 1024, 1152, 1536)] == [6, 12, 16, 16, 16]
    assert default_heads(512) == 8
    with pytest.raises(CheckpointError, match="pass heads="):
        default_heads(100)


# ----------------------------------------------------------------------------------------------
# big_vision npz layout


def _big_vision_params(rng: np.random.Generator, *, scanned: bool = False) -> dict[str, np.ndarray]:
    """Random SigLIP image-tower params in big_vision names (no ``params/img/`` prefix)."""

    def normal(*shape: int, scale: float = 0.05, mean: float = 0.0) -> np.ndarray:
        return (mean + rng.normal(0.0, scale, shape)).astype(np.float32)

    def attention(base: str) -> dict[str, np.ndarray]:
        out = {}
        for name in ("query", "key", "value"):
            out[f"{base}{name}/kernel"] = normal(WIDTH, HEADS, HEAD_DIM, scale=0.1)
            out[f"{base}{name}/bias"] = normal(HEADS, HEAD_DIM)
        out[f"{base}out/kernel"] = normal(HEADS, HEAD_DIM, WIDTH, scale=0.1)
        out[f"{base}out/bias"] = normal(WIDTH)
        return out

    def norm(base: str) -> dict[str, np.ndarray]:
        return {f"{base}scale": normal(WIDTH, mean=1.0), f"{base}bias": normal(WIDTH)}

    def mlp(base: str) -> dict[str, np.ndarray]:
        return {
            f"{base}Dense_0/kernel": normal(WIDTH, MLP, scale=0.1),
            f"{base}Dense_0/bias": normal(MLP),
            f"{base}Dense_1/kernel": normal(MLP, WIDTH, scale=0.1),
            f"{base}Dense_1/bias": normal(WIDTH),
        }

    params = {
        "embedding/kernel": normal(PATCH, PATCH, 3, WIDTH, scale=0.02),
        "embedding/bias": normal(WIDTH),
        "pos_embedding": normal(1, GRID * GRID, WIDTH, scale=0.1),
    }
    blocks = []
    for _ in range(DEPTH):
        block = {**norm("LayerNorm_0/"), **attention("MultiHeadDotProductAttention_0/")}
        blocks.append({**block, **norm("LayerNorm_1/"), **mlp("MlpBlock_0/")})
    if scanned:
        for name in blocks[0]:
            params[f"Transformer/encoderblock/{name}"] = np.stack([b[name] for b in blocks])
    else:
        for i, block in enumerate(blocks):
            params.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in block.items()})
    params.update(norm("Transformer/encoder_norm/"))
    params["MAPHead_0/probe"] = normal(1, 1, WIDTH)
    params.update(attention("MAPHead_0/MultiHeadDotProductAttention_0/"))
    params.update(norm("MAPHead_0/LayerNorm_0/"))
    params.update(mlp("MAPHead_0/MlpBlock_0/"))
    return params


#: Two-tower extras a SigLIP npz carries besides the image tower.
TEXT_TOWER = {"params/txt/Embed_0/embedding": np.ones((10, WIDTH), np.float32)}
TEXT_TOWER["params/t"] = np.ones(1, np.float32)
TEXT_TOWER["params/b"] = np.zeros(1, np.float32)


def _timm_siglip(path: Path):
    """timm's SigLIP ViT (as its ``vit_*_siglip_*`` entries) loaded by timm's npz reader."""
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    model = vision_transformer.VisionTransformer(
        img_size=GRID * PATCH,
        patch_size=PATCH,
        embed_dim=WIDTH,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=MLP / WIDTH,
        class_token=False,
        no_embed_class=True,
        global_pool="map",
        act_layer="gelu_tanh",
        num_classes=0,
    ).eval()
    assert model.norm.eps == 1e-6
    with torch.no_grad():
        vision_transformer._load_weights(model, str(path))
    return model


@pytest.fixture(scope="module")
def npz_reference(tmp_path_factory: pytest.TempPathFactory):
    """A random big_vision npz, and timm's model loaded from it."""
    params = _big_vision_params(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("siglip_npz") / "siglip.npz"
    np.savez(path, **{f"params/img/{k}": v for k, v in params.items()}, **TEXT_TOWER)
    return params, path, _timm_siglip(path)


def _assert_matches_timm(encoder: ViTEncoder, timm_model) -> None:
    x = _image(GRID * PATCH, seed=3)
    with torch.no_grad():
        out = encoder(x)
        tokens = timm_model.forward_features(x)
        blocks = timm_model.forward_intermediates(
            x, indices=[0, 1, 2], norm=False, output_fmt="NLC", intermediates_only=True
        )
    torch.testing.assert_close(out.tokens, tokens, atol=ATOL, rtol=0)
    for ours, theirs in zip(out.features[:3], blocks, strict=True):
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.features[3], tokens, atol=ATOL, rtol=0)


def test_npz_reproduces_timm(npz_reference) -> None:
    _, path, timm_model = npz_reference
    encoder = _encoder()
    report = load_siglip(encoder, path)
    map_head = sum(1 for k in _big_vision_params(np.random.default_rng(0)) if "MAPHead" in k)
    assert report == {"loaded": len(encoder.state_dict()), "unused": map_head + len(TEXT_TOWER)}
    _assert_matches_timm(encoder, timm_model)


@pytest.mark.parametrize(
    "style", ["no params/ prefix", "dotted keys", "layer-scanned blocks", "dotted scanned"]
)
def test_npz_key_styles_load_identically(npz_reference, tmp_path, style: str) -> None:
    _, path, timm_model = npz_reference
    params = _big_vision_params(np.random.default_rng(0), scanned="scanned" in style)
    prefix = "img/" if style == "no params/ prefix" else "params/img/"
    arrays = {f"{prefix}{k}": v for k, v in params.items()}
    if "dotted" in style:
        arrays = {k.replace("/", "."): v for k, v in arrays.items()}
    variant = tmp_path / "variant.npz"
    np.savez(variant, **arrays)
    encoder = _encoder()
    load_siglip(encoder, variant)
    _assert_matches_timm(encoder, timm_model)


def test_npz_bfloat16_arrays_are_decoded(npz_reference, tmp_path) -> None:
    params, _, _ = npz_reference
    bf16 = {}
    for name, value in params.items():
        bits = torch.from_numpy(value).to(torch.bfloat16).view(torch.int16).numpy()
        bf16[f"params/img/{name}"] = bits.view(np.dtype("V2"))
    path = tmp_path / "bf16.npz"
    np.savez(path, **bf16)
    checkpoint = read_siglip_checkpoint(path)
    embed = torch.from_numpy(params["embedding/bias"]).to(torch.bfloat16)
    assert checkpoint.state_dict["patch_embed.bias"].dtype == torch.bfloat16
    assert torch.equal(checkpoint.state_dict["patch_embed.bias"], embed)
    encoder = _encoder()
    load_siglip(encoder, path)
    assert torch.equal(encoder.patch_embed.bias, embed.float())


def test_npz_config_and_class_token(npz_reference, tmp_path) -> None:
    params, path, _ = npz_reference
    config = siglip_config_from_checkpoint(path)
    assert (config.width, config.depth, config.mlp_dim, config.heads) == (WIDTH, DEPTH, MLP, HEADS)
    assert (config.patch, config.pretrain_size, config.class_token) == (PATCH, 64, False)
    # A class token (big_vision adds no position to it) loads into a class-token encoder.
    cls = np.full((1, 1, WIDTH), 0.5, np.float32)
    with_cls = tmp_path / "cls.npz"
    np.savez(
        with_cls, **{f"params/img/{k}": v for k, v in params.items()}, **{"params/img/cls": cls}
    )
    assert siglip_config_from_checkpoint(with_cls).class_token is True
    encoder = _encoder(class_token=True)
    load_siglip(encoder, with_cls)
    assert torch.equal(encoder.cls_token, torch.from_numpy(cls))
    assert torch.equal(encoder.pos_embed[0, 0], torch.zeros(WIDTH))
    with torch.no_grad():
        out = encoder(_image(GRID * PATCH))
    assert out.tokens.shape == (2, 1 + GRID * GRID, WIDTH)


# ----------------------------------------------------------------------------------------------
# Errors


def test_shape_mismatch_names_tensors_and_the_fitting_config(hf_model) -> None:
    _, path = hf_model
    model = build_model("vit_siglip_tiny", width=32, heads=2, depth=3)
    with pytest.raises(CheckpointError) as info:
        load_siglip(model, path)
    message = str(info.value)
    assert "does not fit model 'vit_siglip_tiny'" in message
    assert "width 64 (from embeddings.patch_embedding.weight (64, 3, 16, 16)) vs 32" in message
    assert "depth 4 (from encoder.layers.0..3) vs 3" in message
    assert "heads 4 (from num_attention_heads in" in message
    assert "use model: vit_siglip_tiny" in message
    assert (
        "model_overrides: {width: 64, depth: 4, mlp_dim: 128, heads: 4, patch: 16, "
        "pretrain_size: 64}" in message
    )


def test_npz_patch_mismatch_is_a_checkpoint_error(npz_reference) -> None:
    _, path, _ = npz_reference
    encoder = _encoder(patch=8, pretrain_size=32)
    with pytest.raises(CheckpointError, match=r"patch 16 \(from params/img/embedding/kernel"):
        load_siglip(encoder, path)
    with pytest.raises(CheckpointError, match="leave heads unset for npz"):
        read_siglip_checkpoint(path, heads=2)


def test_inconsistent_tensor_is_named(hf_model, tmp_path) -> None:
    _, path = hf_model
    tensors = load_file(path)
    tensors["encoder.layers.2.mlp.fc1.weight"] = torch.zeros(MLP, WIDTH + 1)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, broken)
    with pytest.raises(
        CheckpointError,
        match=r"'encoder.layers.2.mlp.fc1.weight' has shape \(128, 65\), expected \(128, 64\)",
    ):
        read_siglip_checkpoint(broken)
    del tensors["encoder.layers.2.mlp.fc1.weight"]
    save_file(tensors, broken)
    with pytest.raises(CheckpointError, match="'encoder.layers.2.mlp.fc1.weight' is missing"):
        read_siglip_checkpoint(broken)
    save_file({k: v for k, v in tensors.items() if "layers.2." not in k}, broken)
    with pytest.raises(CheckpointError, match=r"blocks \[2\] of 4 are missing"):
        read_siglip_checkpoint(broken)


@pytest.mark.parametrize("fixture", ["hf_model", "npz_reference"])
def test_truncated_file_is_a_checkpoint_error(request, tmp_path, fixture: str) -> None:
    path = request.getfixturevalue(fixture)[1]
    truncated = tmp_path / path.name
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated: download it again"):
        load_siglip(_encoder(), truncated)


def test_garbage_and_missing_files_are_checkpoint_errors(tmp_path) -> None:
    garbage = tmp_path / "weights.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="could not be read as safetensors"):
        read_siglip_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_siglip_checkpoint(tmp_path / "absent.npz")
    with pytest.raises(CheckpointError, match="is a folder; pass the file in it"):
        read_siglip_checkpoint(tmp_path)
    pickled = tmp_path / "object.npz"
    # An object array needs unpickling, which is never done: refused when it is read.
    np.savez(pickled, **{"params/img/embedding/kernel": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="could not be read as a big_vision .npz"):
        read_siglip_checkpoint(pickled)


def test_file_without_vision_tower_is_a_checkpoint_error(tmp_path) -> None:
    text_only = tmp_path / "gemma.safetensors"
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4)}, text_only)
    with pytest.raises(CheckpointError, match="holds no SigLIP vision tower"):
        load_siglip(_encoder(), text_only)
    npz = tmp_path / "text.npz"
    np.savez(npz, **TEXT_TOWER)
    with pytest.raises(CheckpointError, match=r"holds no SigLIP vision tower.*params/b"):
        load_siglip(_encoder(), npz)


def test_index_shard_outside_its_folder_is_refused(tmp_path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="not a plain file name next to the index"):
        read_siglip_checkpoint(index)


def test_non_vit_model_is_refused(hf_model) -> None:
    with pytest.raises(CheckpointError, match="needs a ViTEncoder.*'unet_tiny'"):
        load_siglip(build_model("unet_tiny"), hf_model[1])


# ----------------------------------------------------------------------------------------------
# ob-train's init_from path


def test_load_backbone_changes_the_encoder_not_the_decoder(hf_model) -> None:
    model, path = hf_model
    torch.manual_seed(0)
    building = build_model("vit_siglip_tiny")
    encoder_before = {k: v.clone() for k, v in building.net.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in building.net.decoder.state_dict().items()}
    report = load_pretrained(building, path)
    assert report == {"loaded": len(encoder_before), "unused": HF_HEAD_TENSORS}
    encoder_after = building.net.encoder.state_dict()
    assert all(not torch.equal(encoder_after[k], v) for k, v in encoder_before.items())
    decoder_after = building.net.decoder.state_dict()
    assert all(torch.equal(decoder_after[k], v) for k, v in decoder_before.items())
    _assert_matches_hf(building.net.encoder.eval(), model, GRID * PATCH)
