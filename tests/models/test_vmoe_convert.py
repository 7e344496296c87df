"""V-MoE checkpoints (google-research/vmoe) converted into VMoEEncoder reproduce vmoe's forward.

The reference is written here from the checkpoint's arrays alone, following vmoe's
``vmoe/nn/vit_moe.py`` and ``vmoe/nn/routing.py`` in float64 numpy: flax patch convolution,
class token, learned positions on every token, pre-norm blocks with flax attention, and in the
MoE blocks a per-token loop over the top-k experts of ``softmax(x @ router)``, whose gates (not
renormalised) weight the experts' outputs. vmoe's own checkpoint files are written with the
``msgpack`` library as ``vmoe/checkpoints/{partitioned,serialization}.py`` lay them out.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from open_buildings.errors import CheckpointError
from open_buildings.models import build_model
from open_buildings.models.convert.vmoe import (
    load_vmoe,
    read_vmoe_checkpoint,
    vmoe_config_from_checkpoint,
)
from open_buildings.models.moe import moe_layers, set_capacity
from open_buildings.models.registry import load_pretrained
from open_buildings.models.vit import resample_pos_embed

ATOL = 1e-5
WIDTH, HEADS, HEAD_DIM, MLP, PATCH, DEPTH, GRID, EXPERTS, K = 32, 4, 8, 64, 8, 4, 4, 4, 2
CLASSES = 10
#: Arrays outside the encoder: pre_logits and head (kernel and bias each).
HEAD_ARRAYS = 4
#: The registry overrides that fit the tiny checkpoints of these tests.
FIT = {
    "width": WIDTH,
    "depth": DEPTH,
    "mlp_dim": MLP,
    "heads": HEADS,
    "patch": PATCH,
    "pretrain_size": GRID * PATCH,
    "num_experts": EXPERTS,
    "k": K,
}


def _vmoe_params(
    *, class_token: bool = True, moe: tuple[int, ...] = (1, 3), grid: int = GRID, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random float32 parameters under vmoe's VisionTransformerMoe names (flattened with '/')."""
    rng = np.random.default_rng(seed)
    c, m, e = WIDTH, MLP, EXPERTS

    def w(*shape: int, std: float = 1.0, fan_in: int | None = None) -> np.ndarray:
        fan_in = fan_in or (shape[-2] if len(shape) > 1 else 1)
        return (rng.standard_normal(shape) * std / np.sqrt(fan_in)).astype(np.float32)

    def norm(name: str) -> dict[str, np.ndarray]:
        scale = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        return {f"{name}/scale": scale, f"{name}/bias": w(c, std=0.1)}

    tokens = grid * grid + int(class_token)
    params = {
        "embedding/kernel": (rng.standard_normal((PATCH, PATCH, 3, c)) / 14).astype(np.float32),
        "embedding/bias": w(c, std=0.1),
        "Encoder/posembed_input/pos_embedding": w(1, tokens, c, std=0.5),
        **norm("Encoder/encoder_norm"),
        "pre_logits/kernel": w(c, c),
        "pre_logits/bias": w(c),
        "head/kernel": w(c, CLASSES),
        "head/bias": w(CLASSES),
    }
    if class_token:
        params["cls"] = w(1, 1, c, std=0.5)
    for i in range(DEPTH):
        b = f"Encoder/encoderblock_{i}/"
        params.update(norm(f"{b}LayerNorm_0"))
        params.update(norm(f"{b}LayerNorm_1"))
        for n in ("query", "key", "value"):
            params[f"{b}SelfAttention/{n}/kernel"] = w(c, HEADS, HEAD_DIM, fan_in=c)
            params[f"{b}SelfAttention/{n}/bias"] = w(HEADS, HEAD_DIM, std=0.1)
        params[f"{b}SelfAttention/out/kernel"] = w(HEADS, HEAD_DIM, c, fan_in=c)
        params[f"{b}SelfAttention/out/bias"] = w(c, std=0.1)
        if i in moe:
            params[f"{b}Moe/Router/dense/kernel"] = w(c, e, std=3.0)
            params[f"{b}Moe/Mlp/Dense_0/kernel"] = w(e, c, m)
            params[f"{b}Moe/Mlp/Dense_0/bias"] = w(e, m, std=0.1)
            params[f"{b}Moe/Mlp/Dense_1/kernel"] = w(e, m, c)
            params[f"{b}Moe/Mlp/Dense_1/bias"] = w(e, c, std=0.1)
        else:
            params[f"{b}Mlp/Dense_0/kernel"] = w(c, m)
            params[f"{b}Mlp/Dense_0/bias"] = w(m, std=0.1)
            params[f"{b}Mlp/Dense_1/kernel"] = w(m, c)
            params[f"{b}Mlp/Dense_1/bias"] = w(c, std=0.1)
    return params


def _save_npz(path: Path, params: dict[str, np.ndarray], prefix: str = "params/") -> Path:
    np.savez(path, **{prefix + k: v for k, v in params.items()})
    return path


# ----------------------------------------------------------------------------------------------
# The reference forward, from the arrays (vmoe's VisionTransformerMoe, deterministic routing)


def _layer_norm(x: np.ndarray, params: dict[str, np.ndarray], name: str) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * params[f"{name}/scale"] + params[f"{name}/bias"]


def _gelu(x: np.ndarray) -> np.ndarray:
    # flax nn.gelu defaults to the tanh approximation.
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _moe_token(
    y: np.ndarray, params: dict[str, np.ndarray], b: str, k: int, renormalise: bool
) -> np.ndarray:
    gates = _softmax(y @ params[f"{b}Moe/Router/dense/kernel"])
    top = np.argsort(-gates)[:k]
    if renormalise:  # not what vmoe does: kept only to show the test can tell
        gates = gates / gates[top].sum()
    out = np.zeros_like(y)
    for expert in top:
        hidden = _gelu(
            y @ params[f"{b}Moe/Mlp/Dense_0/kernel"][expert]
            + params[f"{b}Moe/Mlp/Dense_0/bias"][expert]
        )
        expert_out = (
            hidden @ params[f"{b}Moe/Mlp/Dense_1/kernel"][expert]
            + params[f"{b}Moe/Mlp/Dense_1/bias"][expert]
        )
        out += gates[expert] * expert_out
    return out


def _reference(
    params: dict[str, np.ndarray], images: np.ndarray, k: int = K, renormalise: bool = False
) -> np.ndarray:
    params = {name: value.astype(np.float64) for name, value in params.items()}
    kernel = params["embedding/kernel"]
    p, _, bands, c = kernel.shape
    x = images.astype(np.float64).transpose(0, 2, 3, 1)
    batch, height, width, _ = x.shape
    gh, gw = height // p, width // p
    patches = x.reshape(batch, gh, p, gw, p, bands).transpose(0, 1, 3, 2, 4, 5)
    tokens = patches.reshape(batch, gh * gw, p * p * bands) @ kernel.reshape(-1, c)
    tokens = tokens + params["embedding/bias"]
    if "cls" in params:
        tokens = np.concatenate([np.repeat(params["cls"], batch, axis=0), tokens], axis=1)
    x = tokens + params["Encoder/posembed_input/pos_embedding"]
    for i in range(DEPTH):
        b = f"Encoder/encoderblock_{i}/"
        y = _layer_norm(x, params, f"{b}LayerNorm_0")
        q, key, v = (
            np.einsum("bnc,chd->bnhd", y, params[f"{b}SelfAttention/{n}/kernel"])
            + params[f"{b}SelfAttention/{n}/bias"]
            for n in ("query", "key", "value")
        )
        attn = _softmax(np.einsum("bqhd,bkhd->bhqk", q, key) / np.sqrt(q.shape[-1]))
        out = np.einsum("bhqk,bkhd->bqhd", attn, v)
        x = x + np.einsum("bqhd,hdc->bqc", out, params[f"{b}SelfAttention/out/kernel"])
        x = x + params[f"{b}SelfAttention/out/bias"]
        y = _layer_norm(x, params, f"{b}LayerNorm_1")
        if f"{b}Moe/Router/dense/kernel" in params:
            mlp = np.stack(
                [
                    np.stack(
                        [_moe_token(y[n, t], params, b, k, renormalise) for t in range(y.shape[1])]
                    )
                    for n in range(batch)
                ]
            )
        else:
            hidden = _gelu(y @ params[f"{b}Mlp/Dense_0/kernel"] + params[f"{b}Mlp/Dense_0/bias"])
            mlp = hidden @ params[f"{b}Mlp/Dense_1/kernel"] + params[f"{b}Mlp/Dense_1/bias"]
        x = x + mlp
    return _layer_norm(x, params, "Encoder/encoder_norm")


def _images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 3, GRID * PATCH, GRID * PATCH))


def _encoder_tokens(model, images: np.ndarray) -> torch.Tensor:
    encoder = model.net.encoder
    set_capacity(model, 100.0)  # room for every choice: nothing is dropped
    model.eval()
    with torch.no_grad():
        tokens = encoder(torch.from_numpy(images).float()).tokens
    for layer in moe_layers(model):
        assert bool((layer.last_routing.slot >= 0).all()), "a routing choice was dropped"
    return tokens


# ----------------------------------------------------------------------------------------------
# npz exports


@pytest.mark.parametrize(
    ("class_token", "moe", "placement"),
    [(True, (1, 3), {"moe_placement": "every_other"}), (False, (3,), {"moe_placement": "last_n"})],
    ids=["token_every_2", "gap_last_1"],
)
def test_npz_reproduces_the_vmoe_forward(tmp_path, class_token, moe, placement) -> None:
    params = _vmoe_params(class_token=class_token, moe=moe)
    path = _save_npz(tmp_path / "vmoe.npz", params)
    last_n = {"moe_last_n": len(moe)} if placement["moe_placement"] == "last_n" else {}
    model = build_model("vmoe_tiny", **FIT, class_token=class_token, **placement, **last_n)
    report = load_vmoe(model, path)
    assert report == {"loaded": len(model.net.encoder.state_dict()), "unused": HEAD_ARRAYS}
    images = _images()
    ours = _encoder_tokens(model, images)
    expected = _reference(params, images)
    assert ours.shape == expected.shape == (2, GRID * GRID + int(class_token), WIDTH)
    np.testing.assert_allclose(ours.numpy(), expected, atol=ATOL, rtol=0)
    # The comparison can fail: top-1 routing, or gates renormalised over the chosen experts,
    # give other tokens.
    assert np.abs(_reference(params, images, k=1) - expected).max() > 100 * ATOL
    renormalised = _reference(params, images, renormalise=True)
    assert np.abs(renormalised - expected).max() > 100 * ATOL


def test_config_is_inferred_from_the_shapes(tmp_path) -> None:
    path = _save_npz(tmp_path / "vmoe.npz", _vmoe_params(class_token=True, moe=(3,)))
    checkpoint = read_vmoe_checkpoint(path)
    assert checkpoint.layout == "npz"
    assert checkpoint.moe_blocks == (3,)
    assert checkpoint.in_chans == 3
    assert checkpoint.fields == {
        "width": WIDTH,
        "depth": DEPTH,
        "mlp_dim": MLP,
        "heads": HEADS,
        "patch": PATCH,
        "pretrain_size": GRID * PATCH,
        "class_token": True,
        "num_experts": EXPERTS,
        "moe_placement": "last_n",
        "moe_last_n": 1,
        "act": "gelu_tanh",
        "pre_norm": False,
        "ln_eps": 1e-6,
    }
    assert checkpoint.evidence["num_experts"] == (
        f"params/Encoder/encoderblock_3/Moe/Router/dense/kernel {(WIDTH, EXPERTS)}"
    )
    assert sorted(checkpoint.unused) == [
        "params/head/bias",
        "params/head/kernel",
        "params/pre_logits/bias",
        "params/pre_logits/kernel",
    ]
    config = vmoe_config_from_checkpoint(path, k=1, decoder_channels=16)
    assert (config.width, config.depth, config.k, config.decoder_channels) == (WIDTH, DEPTH, 1, 16)
    assert (config.moe_placement, config.moe_last_n, config.class_token) == ("last_n", 1, True)
    model = build_model("vmoe_tiny", **vars(config))
    load_vmoe(model, path)


@pytest.mark.parametrize("style", ["dots", "bare", "target"])
def test_npz_key_styles_load_identically(tmp_path, style: str) -> None:
    params = _vmoe_params()
    reference = read_vmoe_checkpoint(_save_npz(tmp_path / "ref.npz", params)).state_dict
    if style == "dots":
        path = tmp_path / "dots.npz"
        np.savez(path, **{"params." + k.replace("/", "."): v for k, v in params.items()})
    else:
        path = _save_npz(tmp_path / f"{style}.npz", params, "" if style == "bare" else "target/")
    state = read_vmoe_checkpoint(path).state_dict
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)


def test_expert_and_router_tensors_are_converted_to_our_layout(tmp_path) -> None:
    params = _vmoe_params()
    state = read_vmoe_checkpoint(_save_npz(tmp_path / "v.npz", params)).state_dict
    b = "Encoder/encoderblock_1/Moe/"
    np.testing.assert_array_equal(state["blocks.1.mlp.router"], params[f"{b}Router/dense/kernel"].T)
    np.testing.assert_array_equal(state["blocks.1.mlp.w1"], params[f"{b}Mlp/Dense_0/kernel"])
    np.testing.assert_array_equal(state["blocks.1.mlp.b1"][:, 0], params[f"{b}Mlp/Dense_0/bias"])
    np.testing.assert_array_equal(state["blocks.1.mlp.w2"], params[f"{b}Mlp/Dense_1/kernel"])
    assert tuple(state["blocks.1.mlp.b2"].shape) == (EXPERTS, 1, WIDTH)
    assert "blocks.1.mlp.fc1.weight" not in state and "blocks.0.mlp.fc1.weight" in state


def test_position_grid_is_resampled_to_the_model(tmp_path) -> None:
    params = _vmoe_params()
    path = _save_npz(tmp_path / "v.npz", params)
    model = build_model("vmoe_tiny", **{**FIT, "pretrain_size": 6 * PATCH}, class_token=True)
    load_vmoe(model, path)
    pos = torch.from_numpy(params["Encoder/posembed_input/pos_embedding"])
    expected = torch.cat([pos[:, :1], resample_pos_embed(pos[:, 1:], (6, 6))], dim=1)
    assert torch.equal(model.net.encoder.pos_embed.detach(), expected)


# ----------------------------------------------------------------------------------------------
# vmoe's partitioned checkpoints (.index + .data-*)

_MAGIC = "__msgpack_array_chunk_a87ca2__"


def _write_vmoe(
    prefix: Path,
    tree: dict[str, np.ndarray],
    *,
    shard_count: int = 2,
    version: str | None = "20220622",
    bfloat16: bool = False,
    order: list[str] | None = None,
) -> Path:
    """Write ``tree`` (flat '/' names) as vmoe's partitioned ``save_checkpoint`` would.

    Arrays with a leading experts axis are split in two slices on two shards (as with expert
    parallelism), others go whole to one shard; each slice is stored as subchunks of at most
    100 values. ``order`` numbers the arrays in the data files (default: JAX's sorted order).
    """
    msgpack = pytest.importorskip("msgpack")

    def pack(obj: object) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    def slice_nd(slices: list[tuple[int, int]]) -> bytes:
        return pack(tuple(pack((start, stop, None)) for start, stop in slices))

    names = sorted(tree, key=lambda n: n.split("/"))
    order = order or names
    index: dict = {}
    data: list[dict] = [{_MAGIC: True} for _ in range(shard_count)]
    for number, name in enumerate(order):
        array = tree[name]
        dtype = "bfloat16" if bfloat16 and array.dtype.kind == "f" else array.dtype.name
        if dtype == "bfloat16":
            array = torch.from_numpy(array).to(torch.bfloat16).view(torch.int16).numpy()
        full = [(0, size) for size in array.shape]
        if "/Moe/Mlp/" in name:
            half = array.shape[0] // 2
            pieces = [[(0, half), *full[1:]], [(half, array.shape[0]), *full[1:]]]
            shards = [0, 1]
        else:
            pieces, shards = [full], [number % shard_count]
        for piece, shard in zip(pieces, shards, strict=True):
            chunk = array[tuple(slice(a, b) for a, b in piece)].reshape(-1)
            subchunks = [
                msgpack.ExtType(1, pack(((len(sub),), dtype, sub.tobytes("C"))))
                for sub in (chunk[i : i + 100] for i in range(0, max(chunk.size, 1), 100))
            ]
            entry = data[shard].setdefault(str(number), [])
            entry.append([subchunks, msgpack.ExtType(6, slice_nd(piece))])
        aval = pack((list(array.shape), dtype, False, {}))
        info = pack((aval, tuple(slice_nd(p) for p in pieces), tuple(shards)))
        node = index
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = msgpack.ExtType(8, info)
    header: dict = {"shard_count": shard_count, "index": index}
    if version is not None:
        header["version"] = version
    index_path = Path(f"{prefix}.index")
    index_path.write_bytes(pack(header))
    for shard, content in enumerate(data):
        Path(f"{prefix}.data-{shard:05d}-of-{shard_count:05d}").write_bytes(pack(content))
    return index_path


def _train_state(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """vmoe's TrainState as a state dict: params, Adam moments under the same names, step."""
    tree = {f"params/{k}": v for k, v in params.items()}
    tree.update({f"opt_state/mu/{k}": np.zeros_like(v) for k, v in params.items()})
    tree["step"] = np.array(1000, dtype=np.int32)
    return tree


@pytest.mark.parametrize("version", ["20220622", None], ids=["v1", "unversioned"])
def test_vmoe_checkpoint_loads_like_the_npz(tmp_path, version) -> None:
    params = _vmoe_params()
    npz = read_vmoe_checkpoint(_save_npz(tmp_path / "v.npz", params))
    index = _write_vmoe(tmp_path / "ckpt_1000", _train_state(params), version=version)
    checkpoint = read_vmoe_checkpoint(index)
    assert checkpoint.layout == "vmoe"
    assert checkpoint.fields == npz.fields
    assert checkpoint.state_dict.keys() == npz.state_dict.keys()
    assert all(torch.equal(checkpoint.state_dict[k], npz.state_dict[k]) for k in npz.state_dict)
    # The classifier, every Adam moment and the step are left unused.
    assert len(checkpoint.unused) == HEAD_ARRAYS + len(params) + 1
    # The prefix (without .index) is accepted too, as vmoe names checkpoints.
    state = read_vmoe_checkpoint(tmp_path / "ckpt_1000").state_dict
    assert torch.equal(state["blocks.3.mlp.w2"], npz.state_dict["blocks.3.mlp.w2"])


def test_vmoe_checkpoint_reproduces_the_vmoe_forward(tmp_path) -> None:
    params = _vmoe_params(seed=3)
    index = _write_vmoe(tmp_path / "ckpt", {f"params/{k}": v for k, v in params.items()})
    model = build_model("vmoe_tiny", **FIT, class_token=True)
    report = load_pretrained(model, index)
    assert report == {"loaded": len(model.net.encoder.state_dict()), "unused": HEAD_ARRAYS}
    images = _images(seed=1)
    np.testing.assert_allclose(
        _encoder_tokens(model, images).numpy(), _reference(params, images), atol=ATOL, rtol=0
    )


def test_vmoe_bfloat16_arrays_are_decoded(tmp_path) -> None:
    params = _vmoe_params()
    index = _write_vmoe(
        tmp_path / "bf16", {f"params/{k}": v for k, v in params.items()}, bfloat16=True
    )
    state = read_vmoe_checkpoint(index).state_dict
    kernel = params["Encoder/encoderblock_1/Moe/Mlp/Dense_0/kernel"]
    assert state["blocks.1.mlp.w1"].dtype == torch.bfloat16
    assert torch.equal(state["blocks.1.mlp.w1"], torch.from_numpy(kernel).to(torch.bfloat16))
    model = build_model("vmoe_tiny", **FIT, class_token=True)
    load_vmoe(model, index)
    assert torch.equal(
        model.net.encoder.blocks[1].mlp.w1.detach(),
        torch.from_numpy(kernel).to(torch.bfloat16).float(),
    )


def test_vmoe_shard_problems_are_checkpoint_errors(tmp_path) -> None:
    params = {f"params/{k}": v for k, v in _vmoe_params().items()}
    index = _write_vmoe(tmp_path / "ckpt", params)
    shard = tmp_path / "ckpt.data-00001-of-00002"
    with pytest.raises(
        CheckpointError, match=r"one shard of a V-MoE checkpoint; pass its index, ckpt\.index"
    ):
        read_vmoe_checkpoint(shard)
    content = shard.read_bytes()
    shard.write_bytes(content[: len(content) // 2])
    with pytest.raises(
        CheckpointError, match=r"ckpt\.data-00001-of-00002 could not be read.*truncated"
    ):
        read_vmoe_checkpoint(index)
    shard.unlink()
    with pytest.raises(CheckpointError, match=r"needs shard ckpt\.data-00001-of-00002"):
        read_vmoe_checkpoint(index)
    truncated = tmp_path / "cut.index"
    truncated.write_bytes(index.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_vmoe_checkpoint(truncated)


def test_unversioned_checkpoint_of_another_array_order_is_refused(tmp_path) -> None:
    # Before 2022-06-22 vmoe numbered the arrays in the order of the saved object (a dataclass
    # train state need not be sorted); a mismatch shows in the slice sizes.
    params = {f"params/{k}": v for k, v in _vmoe_params().items()}
    order = sorted(params, key=lambda n: n.split("/"))
    index = _write_vmoe(tmp_path / "old", params, version=None, order=order[::-1])
    with pytest.raises(CheckpointError, match=r"do not follow the index's array order.*np\.savez"):
        read_vmoe_checkpoint(index)


def test_unknown_index_version_is_refused(tmp_path) -> None:
    params = {f"params/{k}": v for k, v in _vmoe_params().items()}
    index = _write_vmoe(tmp_path / "new", params, version="20990101")
    with pytest.raises(CheckpointError, match=r"version '20990101'.*flatten_dict\(params"):
        read_vmoe_checkpoint(index)


# ----------------------------------------------------------------------------------------------
# Errors


def test_shape_mismatch_names_fields_and_the_overrides_that_fit(tmp_path) -> None:
    path = _save_npz(tmp_path / "v.npz", _vmoe_params(class_token=True, moe=(3,)))
    model = build_model("vmoe_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_vmoe(model, path)
    message = str(info.value)
    assert (
        f"width {WIDTH} (from params/embedding/kernel {(PATCH, PATCH, 3, WIDTH)}) vs 64" in message
    )
    assert "experts in blocks [3]" in message and "vs [1, 3] in the model" in message
    assert "class_token True" in message
    overrides = re.search(r"model_overrides: \{(.*)\}", message).group(1)
    assert "moe_placement: last_n, moe_last_n: 1" in overrides
    # Nothing was written, and the overrides the message gives do fit.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    parsed = dict(item.split(": ") for item in overrides.split(", "))
    typed = {k: v == "true" if v in ("true", "false") else v for k, v in parsed.items()}
    typed = {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in typed.items()}
    load_vmoe(build_model("vmoe_tiny", **typed), path)


def test_activation_override_is_refused(tmp_path) -> None:
    path = _save_npz(tmp_path / "v.npz", _vmoe_params())
    model = build_model("vmoe_tiny", **FIT, class_token=True, act="gelu")
    with pytest.raises(
        CheckpointError, match=r"act gelu_tanh \(from vmoe's ViT.*drop the act override"
    ):
        load_vmoe(model, path)


def test_inconsistent_array_is_named(tmp_path) -> None:
    params = _vmoe_params()
    params["Encoder/encoderblock_3/Moe/Mlp/Dense_1/kernel"] = np.zeros((EXPERTS, MLP, 5), "f4")
    with pytest.raises(
        CheckpointError,
        match=r"'params/Encoder/encoderblock_3/Moe/Mlp/Dense_1/kernel' has shape \(4, 64, 5\), "
        r"expected \(4, 64, 32\)",
    ):
        read_vmoe_checkpoint(_save_npz(tmp_path / "v.npz", params))
    del params["Encoder/encoderblock_3/Moe/Mlp/Dense_1/kernel"]
    with pytest.raises(CheckpointError, match=r"encoderblock_3/Moe/Mlp/Dense_1/kernel' is missing"):
        read_vmoe_checkpoint(_save_npz(tmp_path / "w.npz", params))


def test_layouts_we_cannot_express_are_refused(tmp_path) -> None:
    params = _vmoe_params(moe=(0, 2))
    with pytest.raises(CheckpointError, match=r"experts are in blocks \[0, 2\] of 4"):
        read_vmoe_checkpoint(_save_npz(tmp_path / "even.npz", params))
    dense = _vmoe_params(moe=())
    with pytest.raises(CheckpointError, match="dense ViT, not a V-MoE"):
        read_vmoe_checkpoint(_save_npz(tmp_path / "dense.npz", dense))
    biased = _vmoe_params()
    biased["Encoder/encoderblock_1/Moe/Router/dense/bias"] = np.zeros(EXPERTS, "f4")
    with pytest.raises(CheckpointError, match="router has a bias"):
        read_vmoe_checkpoint(_save_npz(tmp_path / "biased.npz", biased))


def test_files_that_are_not_vmoe_checkpoints_are_checkpoint_errors(tmp_path) -> None:
    np.savez(tmp_path / "other.npz", **{"a/b": np.zeros(3, "f4")})
    with pytest.raises(CheckpointError, match="holds no V-MoE.*first names: a/b"):
        read_vmoe_checkpoint(tmp_path / "other.npz")
    np.savez(
        tmp_path / "siglip.npz",
        **{
            "img/embedding/kernel": np.zeros((2, 2, 3, 4), "f4"),
            "img/Transformer/encoderblock_0/x": np.zeros(1, "f4"),
        },
    )
    with pytest.raises(CheckpointError, match="looks like a big_vision ViT"):
        read_vmoe_checkpoint(tmp_path / "siglip.npz")
    good = _save_npz(tmp_path / "v.npz", _vmoe_params())
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_vmoe_checkpoint(cut)
    (tmp_path / "garbage.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="neither a V-MoE checkpoint index"):
        read_vmoe_checkpoint(tmp_path / "garbage.bin")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_vmoe_checkpoint(tmp_path / "missing.npz")
    with pytest.raises(CheckpointError, match="is a folder"):
        read_vmoe_checkpoint(tmp_path)


def test_non_vmoe_model_is_refused(tmp_path) -> None:
    path = _save_npz(tmp_path / "v.npz", _vmoe_params())
    with pytest.raises(CheckpointError, match="needs a VMoEEncoder.*'vit_siglip_tiny'"):
        load_vmoe(build_model("vit_siglip_tiny"), path)


def test_load_backbone_changes_the_encoder_not_the_decoder(tmp_path) -> None:
    path = _save_npz(tmp_path / "v.npz", _vmoe_params())
    torch.manual_seed(0)
    model = build_model("vmoe_tiny", **FIT, class_token=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, path)
    encoder_keys = {f"net.encoder.{k}" for k in model.net.encoder.state_dict()}
    assert report == {"loaded": len(encoder_keys), "unused": HEAD_ARRAYS}
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == encoder_keys


def test_damaged_vmoe_files_raise_only_checkpoint_errors(tmp_path) -> None:
    # Hostile input: whatever bytes are changed, the reader fails with a CheckpointError (or
    # reads values), never with another exception or a huge allocation.
    params = {f"params/{k}": v for k, v in _vmoe_params().items()}
    index = _write_vmoe(tmp_path / "ckpt", params)
    shard = tmp_path / "ckpt.data-00000-of-00002"
    rng = np.random.default_rng(0)
    failures = 0
    for target in (index, shard):
        original = target.read_bytes()
        header = min(len(original), 4096)  # where the structure (not the float data) lies
        for _ in range(40):
            damaged = bytearray(original)
            for position in rng.integers(0, header, size=3):
                damaged[position] = int(rng.integers(0, 256))
            target.write_bytes(bytes(damaged))
            try:
                read_vmoe_checkpoint(index)
            except CheckpointError:
                failures += 1
        target.write_bytes(original)
    assert failures > 0
    read_vmoe_checkpoint(index)
