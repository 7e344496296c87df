"""Load official V-MoE checkpoints (google-research/vmoe) into a V-MoE encoder (:mod:`.vmoe`).

Two layouts are read, and nothing in them is ever executed or unpickled:

- **vmoe's own partitioned checkpoint**: ``{prefix}.index`` (pass this file, or the prefix) and
  its shards ``{prefix}.data-{i:05d}-of-{n:05d}`` beside it, as
  ``vmoe.checkpoints.partitioned.save_checkpoint`` writes them: msgpack files in flax's
  serialization format. The index maps every array of the tree (a nested dict: the parameters,
  possibly under ``params/`` next to ``opt_state/`` and ``step``) to its global shape and dtype
  and to the shards holding its slices; each shard holds, per array (numbered in the order JAX
  flattens the tree), slices of ``[row-major bytes]`` with their global position. The reader
  here parses that msgpack itself over a memory map, so a multi-GB shard is not copied and
  only the parameters' slices are decoded; JAX, flax and msgpack are not needed.
- **npz export** of the flattened parameter tree, keys joined by ``/`` (or ``.``), with an
  optional ``params/`` or ``target/`` prefix. From a JAX environment::

      np.savez(out, **flax.traverse_util.flatten_dict(params, sep='/'))

  bfloat16 arrays (which numpy stores as raw 2-byte records) are decoded.

The parameter names are vmoe's ``VisionTransformerMoe`` (``vmoe/nn/vit_moe.py``):
``embedding/{kernel,bias}`` (HWIO patch kernel), ``cls`` (classifier ``token``),
``Encoder/posembed_input/pos_embedding`` (class token included),
``Encoder/encoderblock_{i}/{LayerNorm_0,SelfAttention,LayerNorm_1}`` and either the dense
``Mlp/Dense_{0,1}`` or the sparse ``Moe/Mlp/Dense_{0,1}`` with a leading experts axis and the
bias-free router ``Moe/Router/dense/kernel`` ``(width, E)``, then ``Encoder/encoder_norm``.
``pre_logits`` and ``head`` (the classifier) are counted as unused. The dense parts convert as
the big_vision ViT does (:func:`~.vit_convert.flax_block_state`).

The config is inferred from the shapes: width, depth, MLP width, heads, patch, the position
grid, the class token, the number of experts and which blocks are sparse (vmoe's ``Every 2`` is
our ``every_other``, ``Last n`` our ``last_n``). The number of experts each token is routed to
(``k``) and the capacity factors are routing settings, not weights: the published models use
``k = 2`` (the ``K=`` of their names), our default. vmoe combines the experts' outputs with the
softmax gates of the selected experts, not renormalised, as :class:`~.moe.MoEMlp` does.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from open_buildings.errors import CheckpointError
from open_buildings.models.base import BuildingModel
from open_buildings.models.checkpoint_files import (
    NamedTensors,
    array_to_tensor,
    layer_indices,
    open_npz,
    unreadable,
)
from open_buildings.models.pretrained import register_loader
from open_buildings.models.vit_convert import (
    _yaml,
    copy_encoder_state,
    encoder_of,
    flax_block_state,
    flax_heads,
)
from open_buildings.models.vmoe import PLACEMENTS, VMoEConfig, VMoEEncoder, moe_blocks

__all__ = [
    "VMoECheckpoint",
    "load_vmoe",
    "read_vmoe_checkpoint",
    "vmoe_config_from_checkpoint",
]

ANCHOR = "embedding/kernel"
#: A name the encoder has beside :data:`ANCHOR`; it tells V-MoE/vit_jax trees from others.
ENCODER_ANCHOR = "Encoder/encoder_norm/scale"
#: Where the parameters sit in a tree that holds more (train state, old flax optimizers).
PARAM_PREFIXES = ("", "params/", "target/", "optimizer/target/")
#: Index versions that vmoe writes: before 2022-06-22 (no version) and ``20220622``.
INDEX_VERSIONS = (None, "20220622")
#: An index larger than this is not a V-MoE index (the V-MoE-H/14 index is far smaller).
MAX_INDEX_BYTES = 64 << 20
#: Fields compared between a checkpoint and the model it is loaded into, in message order.
FIT_FIELDS = (
    "width",
    "depth",
    "mlp_dim",
    "heads",
    "patch",
    "class_token",
    "num_experts",
    "act",
    "pre_norm",
    "ln_eps",
)
_VMOE_FIXED = "vmoe's ViT (vit_jax MlpBlock: flax nn.gelu, tanh form; flax LayerNorm eps 1e-6)"
_DTYPES = {
    name: np.dtype(name)
    for name in (
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
    )
}
_DTYPES["bfloat16"] = np.dtype(np.uint16)  # the raw bits, made torch.bfloat16 on conversion
_DATA_SHARD = re.compile(r"\.data-\d+-of-\d+$")
_ARRAY_CHUNKS_KEY = "__msgpack_array_chunk_a87ca2__"
# flax/vmoe msgpack extension codes.
_EXT_NDARRAY, _EXT_SLICE_ND, _EXT_INDEX_INFO = 1, 6, 8


class VMoECheckpoint(NamedTuple):
    """A V-MoE encoder read from a file, in :class:`~.vmoe.VMoEEncoder` names.

    Attributes:
        fields: :class:`~.vmoe.VMoEConfig` fields the file determines (``width``, ``depth``,
            ``mlp_dim``, ``heads``, ``patch``, ``pretrain_size``, ``class_token``,
            ``num_experts``, ``moe_placement`` and ``moe_last_n``, and the fixed ``act``,
            ``pre_norm`` and ``ln_eps`` of vmoe's ViT).
        moe_blocks: 0-based indices of the blocks whose MLP is a mixture of experts.
        state_dict: Encoder state-dict keys to tensors (position grid as stored).
        unused: Source array names that were not converted (classifier, optimizer state...).
        layout: ``"vmoe"`` (partitioned ``.index`` + ``.data-*``) or ``"npz"``.
        evidence: For each field, the source tensor (and shape) it was read from.
        in_chans: Input bands of the patch embedding.
    """

    fields: dict[str, Any]
    moe_blocks: tuple[int, ...]
    state_dict: dict[str, torch.Tensor]
    unused: list[str]
    layout: str
    evidence: dict[str, str]
    in_chans: int


# ----------------------------------------------------------------------------------------------
# Arrays in files


_WHAT = "V-MoE checkpoint"
_REMEDY = (
    "copy it again, or pass the checkpoint's .index file (with its .data-* shards beside it) or "
    "an .npz export"
)


def _corrupt(path: Path, detail: BaseException | str) -> CheckpointError:
    return unreadable(path, "a V-MoE checkpoint", detail, _REMEDY)


class _MsgpackError(Exception):
    pass


class _Ext(NamedTuple):
    code: int
    data: memoryview


class _Unpacker:
    """A msgpack reader over a buffer; binary and extension payloads stay views into it."""

    MAX_DEPTH = 64

    def __init__(self, buffer: memoryview) -> None:
        self.buf = buffer
        self.pos = 0

    def _take(self, size: int) -> memoryview:
        end = self.pos + size
        if end > len(self.buf):
            raise _MsgpackError(f"needs {size} bytes at offset {self.pos}, past the end")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def _uint(self, size: int) -> int:
        return int.from_bytes(self._take(size), "big")

    def _count(self, count: int, min_size: int) -> int:
        if count * min_size > len(self.buf) - self.pos:
            raise _MsgpackError(f"a container of {count} items overruns the file")
        return count

    def _str(self, size: int) -> str:
        try:
            return str(self._take(size), "utf-8")
        except UnicodeDecodeError as exc:
            raise _MsgpackError("a string is not UTF-8") from exc

    def value(self, depth: int = 0) -> Any:
        if depth > self.MAX_DEPTH:
            raise _MsgpackError("nested too deeply")
        b = self._uint(1)
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if b <= 0x8F:
            return self._map(b & 0x0F, depth)
        if b <= 0x9F:
            return self._array(b & 0x0F, depth)
        if b <= 0xBF:
            return self._str(b & 0x1F)
        if b in _CONSTANTS:
            return _CONSTANTS[b]
        if 0xC4 <= b <= 0xC6:  # bin 8/16/32
            return self._take(self._uint(1 << (b - 0xC4)))
        if 0xC7 <= b <= 0xC9:  # ext 8/16/32
            size = self._uint(1 << (b - 0xC7))
            code = int.from_bytes(self._take(1), "big", signed=True)
            return _Ext(code, self._take(size))
        if b == 0xCA:
            return struct.unpack(">f", self._take(4))[0]
        if b == 0xCB:
            return struct.unpack(">d", self._take(8))[0]
        if 0xCC <= b <= 0xCF:
            return self._uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            return int.from_bytes(self._take(1 << (b - 0xD0)), "big", signed=True)
        if 0xD4 <= b <= 0xD8:  # fixext 1/2/4/8/16
            code = int.from_bytes(self._take(1), "big", signed=True)
            return _Ext(code, self._take(1 << (b - 0xD4)))
        if 0xD9 <= b <= 0xDB:
            return self._str(self._uint(1 << (b - 0xD9)))
        if b in (0xDC, 0xDD):
            return self._array(self._uint(2 if b == 0xDC else 4), depth)
        if b in (0xDE, 0xDF):
            return self._map(self._uint(2 if b == 0xDE else 4), depth)
        raise _MsgpackError(f"byte 0x{b:02x} at offset {self.pos - 1} starts no msgpack value")

    def _array(self, count: int, depth: int) -> list[Any]:
        return [self.value(depth + 1) for _ in range(self._count(count, 1))]

    def _map(self, count: int, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for _ in range(self._count(count, 2)):
            key = self.value(depth + 1)
            if not isinstance(key, str | int):
                raise _MsgpackError(f"a map key is a {type(key).__name__}")
            out[key] = self.value(depth + 1)
        return out


_CONSTANTS = {0xC0: None, 0xC2: False, 0xC3: True}


def _unpack_whole(data: memoryview) -> Any:
    unpacker = _Unpacker(data)
    value = unpacker.value()
    if unpacker.pos != len(data):
        raise _MsgpackError("trailing bytes after the value")
    return value


def _unpack_ext(value: Any, code: int) -> Any:
    if not isinstance(value, _Ext) or value.code != code:
        raise _MsgpackError(f"expected a msgpack extension of type {code}")
    return _unpack_whole(value.data)


def _slices(data: Any, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    # A vmoe SliceNd: msgpack of [msgpack of (start, stop, step)] per axis.
    axes = _unpack_whole(data) if isinstance(data, memoryview) else None
    if not isinstance(axes, list) or len(axes) != len(shape):
        raise _MsgpackError(f"a slice of a {len(shape)}-d array is not one range per axis")
    out = []
    for axis, size in zip(axes, shape, strict=True):
        triple = _unpack_whole(axis) if isinstance(axis, memoryview) else None
        if not (isinstance(triple, list) and len(triple) == 3):
            raise _MsgpackError("a slice is not (start, stop, step)")
        start, stop, step = triple
        start = 0 if start is None else start
        stop = size if stop is None else stop
        bounds_ok = isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= size
        if step not in (None, 1) or not bounds_ok:
            raise _MsgpackError(f"slice {start}:{stop}:{step} does not fit an axis of {size}")
        out.append((start, stop))
    return tuple(out)


class _IndexEntry(NamedTuple):
    position: int
    shape: tuple[int, ...]
    dtype: str
    slices: tuple[tuple[tuple[int, int], ...], ...]
    shards: tuple[int, ...]


def _index_entry(position: int, leaf: Any) -> _IndexEntry:
    info = _unpack_ext(leaf, _EXT_INDEX_INFO)
    if not (isinstance(info, list) and len(info) == 3 and isinstance(info[0], memoryview)):
        raise _MsgpackError("an index entry is not (shape, slices, shards)")
    shaped, slices, shards = info
    aval = _unpack_whole(shaped)
    if not (isinstance(aval, list) and len(aval) == 4):
        raise _MsgpackError("an array's shape is not (shape, dtype, weak_type, {})")
    shape, dtype = aval[0], aval[1]
    dtype = str(dtype, "utf-8") if isinstance(dtype, memoryview) else dtype
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise _MsgpackError(f"array shape {shape!r} is not a list of sizes")
    shape = tuple(shape)
    if not isinstance(slices, list) or not isinstance(shards, list) or len(shards) != len(slices):
        raise _MsgpackError("an array's slices and shards do not pair up")
    parsed = tuple(_slices(s, shape) for s in slices)
    return _IndexEntry(position, shape, str(dtype), parsed, tuple(shards))


def _flatten(tree: Any, prefix: str, leaves: list[tuple[str, Any]]) -> None:
    # JAX's flattening order: dict keys sorted, lists in order, None is an empty subtree.
    if isinstance(tree, dict):
        for key in sorted(tree, key=str):
            _flatten(tree[key], f"{prefix}{key}/", leaves)
    elif isinstance(tree, list):
        for i, item in enumerate(tree):
            _flatten(item, f"{prefix}{i}/", leaves)
    elif tree is not None:
        leaves.append((prefix.rstrip("/"), tree))


def _open_vmoe(index_path: Path) -> NamedTensors:
    size = index_path.stat().st_size
    if size > MAX_INDEX_BYTES:
        raise CheckpointError(
            f"{index_path} is {size} bytes, too large for a V-MoE checkpoint index; pass the "
            "checkpoint's .index file"
        )
    try:
        header = _unpack_whole(memoryview(index_path.read_bytes()))
        if not isinstance(header, dict) or not {"index", "shard_count"} <= set(header):
            raise _MsgpackError("no 'index' and 'shard_count' entries")
        version = header.get("version")
        if version not in INDEX_VERSIONS:
            raise CheckpointError(
                f"{index_path} is a V-MoE checkpoint of version {version!r}, which this reader "
                f"does not know ({', '.join(str(v) for v in INDEX_VERSIONS[1:])} and the "
                "unversioned one are read); export the parameters to .npz with "
                "np.savez(out, **flax.traverse_util.flatten_dict(params, sep='/'))"
            )
        shard_count = header["shard_count"]
        if not isinstance(shard_count, int) or shard_count < 1:
            raise _MsgpackError(f"shard_count is {shard_count!r}")
        leaves: list[tuple[str, Any]] = []
        _flatten(header["index"], "", leaves)
    except _MsgpackError as exc:
        raise _corrupt(index_path, str(exc)) from exc
    prefix = str(index_path)[: -len(".index")]
    entries: dict[str, tuple[int, Any]] = {n: (i, leaf) for i, (n, leaf) in enumerate(leaves)}
    shards: dict[int, dict[Any, Any]] = {}

    def shard(number: int) -> dict[Any, Any]:
        if number not in shards:
            if not isinstance(number, int) or not 0 <= number < shard_count:
                raise _corrupt(index_path, f"shard {number!r} of {shard_count}")
            shard_path = Path(f"{prefix}.data-{number:05d}-of-{shard_count:05d}")
            if not shard_path.is_file():
                raise CheckpointError(
                    f"{index_path} needs shard {shard_path.name}, which is not beside it; copy "
                    f"every .data-*-of-{shard_count:05d} file of the checkpoint"
                )
            try:
                with shard_path.open("rb") as handle:
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                content = _unpack_whole(memoryview(mapped))
                if not isinstance(content, dict) or content.get(_ARRAY_CHUNKS_KEY) is not True:
                    raise _MsgpackError("not a shard of array chunks")
            except (ValueError, OSError) as exc:
                raise _corrupt(shard_path, exc) from exc
            except _MsgpackError as exc:
                raise _corrupt(shard_path, str(exc)) from exc
            shards[number] = content
        return shards[number]

    def get(name: str) -> torch.Tensor:
        position, leaf = entries[name]
        try:
            entry = _index_entry(position, leaf)
            return _assemble(name, entry, shard)
        except _MsgpackError as exc:
            if version is None:
                # Unversioned files number the arrays in the saved object's order, which is
                # JAX's sorted order only for a tree of plain dicts.
                raise CheckpointError(
                    f"{index_path}: array {name!r} is not where the index puts it ({exc}); the "
                    "shards do not follow the index's array order (a checkpoint from before "
                    "2022-06-22 of a tree that is not a plain dict?). Export the parameters to "
                    ".npz with np.savez(out, **flax.traverse_util.flatten_dict(params, sep='/'))"
                ) from exc
            raise _corrupt(index_path, f"array {name!r}: {exc}") from exc

    def _assemble(
        name: str, entry: _IndexEntry, shard_of: Callable[[int], dict[Any, Any]]
    ) -> torch.Tensor:
        if entry.dtype not in _DTYPES:
            raise CheckpointError(
                f"{index_path}: array {name!r} has dtype {entry.dtype!r}, which is not a V-MoE "
                "weight's"
            )
        dtype = _DTYPES[entry.dtype]
        # The slices are found (as views into the shards) before anything is allocated, so a
        # corrupt shape cannot ask for more memory than the shards hold.
        pieces: list[tuple[tuple[slice, ...], np.ndarray]] = []
        covered = 0
        for global_slice, number in zip(entry.slices, entry.shards, strict=True):
            chunks = shard_of(number).get(str(entry.position))
            if not isinstance(chunks, list):
                raise _MsgpackError(f"shard {number} holds no chunk of array {entry.position}")
            region = tuple(slice(a, b) for a, b in global_slice)
            shape = tuple(b - a for a, b in global_slice)
            for chunk in chunks:
                if not (isinstance(chunk, list) and len(chunk) == 2 and isinstance(chunk[0], list)):
                    raise _MsgpackError("a chunk is not (subchunks, slice)")
                subchunks, where = chunk
                if not (isinstance(where, _Ext) and where.code == _EXT_SLICE_ND):
                    raise _MsgpackError("a chunk's position is not a SliceNd")
                if _slices(where.data, entry.shape) != global_slice:
                    continue
                parts = [_chunk_array(sub, dtype) for sub in subchunks]
                flat = np.concatenate(parts) if parts else np.empty(0, dtype)
                if flat.size != math.prod(shape):
                    raise _MsgpackError(
                        f"shard {number} holds {flat.size} values for a slice of shape {shape}"
                    )
                pieces.append((region, flat.reshape(shape)))
                covered += flat.size
                break
            else:
                raise _MsgpackError(f"shard {number} lacks slice {global_slice}")
        if covered != math.prod(entry.shape):
            raise _MsgpackError(f"the slices cover {covered} of {math.prod(entry.shape)} values")
        out = np.empty(entry.shape, dtype)
        for region, values in pieces:
            out[region] = values
        return array_to_tensor(
            index_path, name, out, what=_WHAT, bfloat16=entry.dtype == "bfloat16"
        )

    return NamedTensors(index_path, list(entries), get, what=_WHAT)


def _chunk_array(sub: Any, dtype: np.dtype) -> np.ndarray:
    # flax's ndarray encoding: msgpack of (shape, dtype name, row-major bytes).
    value = _unpack_ext(sub, _EXT_NDARRAY)
    if not (isinstance(value, list) and len(value) == 3):
        raise _MsgpackError("an array chunk is not (shape, dtype, bytes)")
    shape, dtype_name, buffer = value
    dtype_name = str(dtype_name, "utf-8") if isinstance(dtype_name, memoryview) else dtype_name
    if _DTYPES.get(dtype_name) != dtype or not isinstance(buffer, memoryview):
        raise _MsgpackError(f"a chunk of dtype {dtype_name!r} in an array of {dtype}")
    sizes_ok = isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
    count = math.prod(shape) if sizes_ok else -1
    if count * dtype.itemsize != len(buffer):
        raise _MsgpackError(f"a chunk of shape {shape} holds {len(buffer)} bytes")
    return np.frombuffer(buffer, dtype=dtype).reshape(-1)


def _open(path: Path) -> tuple[NamedTensors, str]:
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder; pass the file in it: the checkpoint's .index file "
            "(its .data-* shards beside it) or an .npz export"
        )
    if not path.is_file() and Path(f"{path}.index").is_file():
        path = Path(f"{path}.index")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a local file")
    if _DATA_SHARD.search(path.name):
        index = Path(_DATA_SHARD.sub(".index", str(path)))
        raise CheckpointError(
            f"{path} is one shard of a V-MoE checkpoint; pass its index, {index.name}, instead "
            "(the shards stay beside it)"
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic.startswith(b"PK"):
        return open_npz(path, what=_WHAT, as_what="an .npz export", remedy=_REMEDY), "npz"
    if path.name.endswith(".index"):
        return _open_vmoe(path), "vmoe"
    raise CheckpointError(
        f"{path} is neither a V-MoE checkpoint index (*.index) nor an .npz of parameters; pass "
        "one of those"
    )


# ----------------------------------------------------------------------------------------------
# The parameter tree


def _find_prefix(arrays: NamedTensors) -> str:
    prefixes = sorted(
        name[: -len(ANCHOR)]
        for name in arrays.names
        if (name == ANCHOR or name.endswith("/" + ANCHOR))
        and arrays.has(name[: -len(ANCHOR)] + ENCODER_ANCHOR)
    )
    if not prefixes:
        sample = ", ".join(sorted(arrays.names)[:5]) or "none"
        hint = (
            " It looks like a big_vision ViT (SigLIP): load it into a vit_siglip_* model."
            if any("Transformer/encoderblock" in n for n in arrays.names)
            else ""
        )
        raise CheckpointError(
            f"{arrays.path} holds no V-MoE: no '{ANCHOR}' beside '{ENCODER_ANCHOR}' (first "
            f"names: {sample}).{hint} Pass a google-research/vmoe checkpoint or its .npz export"
        )
    if len(prefixes) > 1:
        preferred = [p for p in PARAM_PREFIXES if p in prefixes]
        if not preferred:
            raise CheckpointError(
                f"{arrays.path} holds several V-MoE trees ({', '.join(prefixes)}); export the "
                "parameters to load into their own .npz"
            )
        return preferred[0]
    return prefixes[0]


def _read(arrays: NamedTensors, layout: str) -> VMoECheckpoint:
    path = arrays.path
    p = _find_prefix(arrays)
    kernel_key = p + ANCHOR
    kernel = arrays.take(kernel_key)
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
        raise CheckpointError(
            f"{path}: {kernel_key} has shape {tuple(kernel.shape)}, not a square HWIO patch kernel"
        )
    patch, in_chans, width = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    c = width
    sd: dict[str, torch.Tensor] = {
        "patch_embed.weight": kernel.permute(3, 2, 0, 1),
        "patch_embed.bias": arrays.take(f"{p}embedding/bias", (c,)),
    }
    class_token = arrays.has(f"{p}cls")
    if class_token:
        sd["cls_token"] = arrays.take(f"{p}cls", (1, 1, c))
    pos_key = f"{p}Encoder/posembed_input/pos_embedding"
    if not arrays.has(pos_key):
        raise CheckpointError(
            f"{path}: {pos_key!r} is missing; only V-MoE models with learned position "
            "embeddings (position_emb 'learned', vmoe's default) are supported"
        )
    pos = arrays.take(pos_key)
    pos = pos.unsqueeze(0) if pos.ndim == 2 else pos
    prefix_tokens = int(class_token)
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != c or pos.shape[1] <= prefix_tokens:
        raise CheckpointError(
            f"{path}: {pos_key} has shape {tuple(pos.shape)}, expected (1, tokens, {c})"
        )
    grid = math.isqrt(pos.shape[1] - prefix_tokens)
    if grid * grid != pos.shape[1] - prefix_tokens:
        raise CheckpointError(
            f"{path}: {pos_key} holds {pos.shape[1]} positions, not a square grid"
            + (" plus the class token" if class_token else "")
        )
    sd["pos_embed"] = pos

    pattern = re.escape(f"{p}Encoder/encoderblock_") + r"(\d+)/"
    blocks = layer_indices(arrays, pattern)
    depth = len(blocks)
    base = [f"{p}Encoder/encoderblock_{i}/" for i in blocks]
    sparse = tuple(i for i in blocks if arrays.has(f"{base[i]}Moe/Router/dense/kernel"))
    query_key = f"{base[0]}SelfAttention/query/kernel"
    query = arrays.take(query_key)
    heads = flax_heads(query, width=c, path=path, key=query_key)
    if not sparse:
        raise CheckpointError(
            f"{path} has no mixture-of-experts layer (no 'Moe/Router/dense/kernel' in any "
            "block): it is a dense ViT, not a V-MoE"
        )
    router_key = f"{base[sparse[0]]}Moe/Router/dense/kernel"
    router = arrays.take(router_key)
    if router.ndim != 2 or router.shape[0] != c:
        raise CheckpointError(
            f"{path}: {router_key} has shape {tuple(router.shape)}, expected (width {c}, experts)"
        )
    num_experts = router.shape[1]
    fc1_key = f"{base[sparse[0]]}Moe/Mlp/Dense_0/kernel"
    fc1 = arrays.take(fc1_key)
    if fc1.ndim != 3 or fc1.shape[:2] != (num_experts, c):
        raise CheckpointError(
            f"{path}: {fc1_key} has shape {tuple(fc1.shape)}, expected ({num_experts} experts, "
            f"width {c}, mlp_dim)"
        )
    m = mlp_dim = fc1.shape[2]
    e = num_experts

    for i in blocks:
        get = functools.partial(_block_tensor, arrays, base[i])
        dense = i not in sparse
        block = flax_block_state(
            get, "SelfAttention/", "Mlp/" if dense else None, width=c, heads=heads, mlp_dim=m
        )
        if not dense:
            if arrays.has(f"{base[i]}Moe/Router/dense/bias"):
                raise CheckpointError(
                    f"{path}: block {i}'s router has a bias; V-MoE routers have none, so this is "
                    "not a model this loader can reproduce"
                )
            block["mlp.router"] = get("Moe/Router/dense/kernel", (c, e)).T
            block["mlp.w1"] = get("Moe/Mlp/Dense_0/kernel", (e, c, m))
            block["mlp.b1"] = get("Moe/Mlp/Dense_0/bias", (e, m)).unsqueeze(1)
            block["mlp.w2"] = get("Moe/Mlp/Dense_1/kernel", (e, m, c))
            block["mlp.b2"] = get("Moe/Mlp/Dense_1/bias", (e, c)).unsqueeze(1)
        sd.update({f"blocks.{i}.{key}": value for key, value in block.items()})
    sd["norm.weight"] = arrays.take(f"{p}Encoder/encoder_norm/scale", (c,))
    sd["norm.bias"] = arrays.take(f"{p}Encoder/encoder_norm/bias", (c,))
    sd = {k: v.contiguous() for k, v in sd.items()}

    placement = _placement(path, depth, sparse)
    shape = tuple(kernel.shape)
    fields: dict[str, Any] = {
        "width": width,
        "depth": depth,
        "mlp_dim": mlp_dim,
        "heads": heads,
        "patch": patch,
        "pretrain_size": grid * patch,
        "class_token": class_token,
        "num_experts": num_experts,
        **placement,
        "act": VMoEConfig.act,
        "pre_norm": False,
        "ln_eps": VMoEConfig.ln_eps,
    }
    evidence = {
        "width": f"{kernel_key} {shape}",
        "patch": f"{kernel_key} {shape}",
        "depth": f"{p}Encoder/encoderblock_0..{depth - 1}",
        "mlp_dim": f"{fc1_key} {tuple(fc1.shape)}",
        "heads": f"{query_key} {tuple(query.shape)}",
        "pretrain_size": f"{pos_key} (grid {grid}x{grid})",
        "class_token": f"{p}cls " + ("present" if class_token else "absent"),
        "num_experts": f"{router_key} {tuple(router.shape)}",
        "moe_blocks": f"Moe/Router in blocks {list(sparse)}",
        "act": _VMOE_FIXED,
        "pre_norm": _VMOE_FIXED,
        "ln_eps": _VMOE_FIXED,
    }
    return VMoECheckpoint(fields, sparse, sd, arrays.unused(), layout, evidence, in_chans)


def _block_tensor(
    arrays: NamedTensors, base: str, name: str, shape: tuple[int, ...]
) -> torch.Tensor:
    return arrays.take(base + name, shape)


def _placement(path: Path, depth: int, sparse: tuple[int, ...]) -> dict[str, Any]:
    odd = tuple(range(1, depth, 2))
    if sparse == odd:
        return {"moe_placement": "every_other"}
    if sparse == odd[-len(sparse) :]:
        return {"moe_placement": "last_n", "moe_last_n": len(sparse)}
    raise CheckpointError(
        f"{path}: the experts are in blocks {list(sparse)} of {depth}; V-MoE models here place "
        f"them in every other block ({list(odd)}) or the last n of those "
        f"(moe_placement: {' or '.join(PLACEMENTS)}), so this layout cannot be loaded"
    )


# ----------------------------------------------------------------------------------------------
# Public API


def read_vmoe_checkpoint(path: str | os.PathLike[str]) -> VMoECheckpoint:
    """Read a V-MoE checkpoint and convert it to :class:`~.vmoe.VMoEEncoder` names.

    The layout is recognised from the content (a zip archive is an npz export) and the name
    (``*.index``). For vmoe's partitioned format only the parameters' slices are decoded.

    Args:
        path: vmoe's ``{prefix}.index`` (or the prefix itself) with the ``.data-*`` shards
            beside it, or an ``.npz`` of the flattened parameter tree.

    Returns:
        The inferred config fields, the converted state dict and the unused array names.

    Raises:
        CheckpointError: The file is missing, unreadable or truncated, holds no V-MoE, its
            arrays are inconsistent with each other, or its expert layers sit in blocks our
            placements cannot express.
    """
    arrays, layout = _open(Path(path))
    return _read(arrays, layout)


def vmoe_config_from_checkpoint(path: str | os.PathLike[str], **overrides: Any) -> VMoEConfig:
    """Build the :class:`~.vmoe.VMoEConfig` a V-MoE checkpoint fits.

    Args:
        path: A checkpoint :func:`read_vmoe_checkpoint` reads.
        **overrides: Other config fields: ``k`` (experts per token, not stored in the weights;
            default 2 as in the published models), capacities, decoder widths...

    Returns:
        The config.
    """
    fields = dict(read_vmoe_checkpoint(path).fields)
    fields.update(overrides)
    return VMoEConfig(**fields)


def _fitting_entries(checkpoint: VMoECheckpoint) -> list[str]:
    from open_buildings.models.registry import get_entry, list_models

    fits = []
    for name in list_models():
        config = get_entry(name).default_config
        if not name.startswith("vmoe_") or not isinstance(config, VMoEConfig):
            continue
        same = all(getattr(config, k) == checkpoint.fields[k] for k in FIT_FIELDS)
        if same and moe_blocks(config) == checkpoint.moe_blocks:
            fits.append(name)
    return fits


def _mismatch_error(
    checkpoint: VMoECheckpoint, encoder: VMoEEncoder, label: str, path: Path
) -> CheckpointError | None:
    config = encoder.config
    fields = checkpoint.fields
    lines = [
        f"{key} {fields[key]} (from {checkpoint.evidence[key]}) vs {getattr(config, key)} in "
        "the model"
        for key in FIT_FIELDS
        if fields[key] != getattr(config, key)
    ]
    ours = moe_blocks(config)
    if checkpoint.moe_blocks != ours:
        lines.append(
            f"experts in blocks {list(checkpoint.moe_blocks)} (from "
            f"{checkpoint.evidence['moe_blocks']}) vs {list(ours)} in the model"
        )
    bands = encoder.patch_embed.weight.shape[1]
    if checkpoint.in_chans != bands:
        lines.append(f"bands {checkpoint.in_chans} (patch embedding) vs {bands} in the model")
    if not lines:
        return None
    fits = _fitting_entries(checkpoint)
    skip = {"act", "pre_norm", "ln_eps"}
    overrides = {k: v for k, v in fields.items() if k not in skip}
    if not overrides["class_token"]:
        del overrides["class_token"]
    text = ", ".join(f"{k}: {_yaml(v)}" for k, v in overrides.items())
    fixed = [k for k in skip if getattr(config, k) != fields[k]]
    drop = f" and drop the {', '.join(sorted(fixed))} override" if fixed else ""
    hint = f"use model: {fits[0]}, or " if fits else "use "
    return CheckpointError(
        f"checkpoint {path} does not fit {label}: " + "; ".join(lines) + f". To load it, {hint}"
        f"model_overrides: {{{text}}}{drop}"
    )


def load_vmoe(model_or_encoder: nn.Module, path: str | os.PathLike[str]) -> dict[str, int]:
    """Copy a V-MoE checkpoint's encoder into a V-MoE encoder, in place.

    The decoder of a :class:`BuildingModel` is left as it is. A position grid other than the
    model's ``pretrain_size // patch`` is resampled bicubically (as the encoder itself does for
    other input sizes); the class token's position is kept.

    Args:
        model_or_encoder: A :class:`BuildingModel` built from a ``vmoe_*`` entry, its
            :class:`~.vit.ViTSegmenter`, or a bare :class:`~.vmoe.VMoEEncoder`.
        path: A checkpoint :func:`read_vmoe_checkpoint` reads.

    Returns:
        ``{"loaded": encoder tensors written, "unused": source arrays left out}``.

    Raises:
        CheckpointError: The file is unreadable or holds no V-MoE, or its shape (width, depth,
            MLP width, heads, patch, class token, experts, expert blocks, bands) differs from
            the model's (the message gives the registry entry or ``model_overrides`` that fit).
    """
    path = Path(path)
    encoder, label = encoder_of(model_or_encoder, VMoEEncoder, "load_vmoe")
    checkpoint = read_vmoe_checkpoint(path)
    error = _mismatch_error(checkpoint, encoder, label, path)
    if error is not None:
        raise error
    grid = checkpoint.fields["pretrain_size"] // checkpoint.fields["patch"]
    loaded = copy_encoder_state(encoder, checkpoint.state_dict, grid=grid, path=path, what="V-MoE")
    return {"loaded": loaded, "unused": len(checkpoint.unused)}


def _load_backbone(model: BuildingModel, path: Path) -> dict[str, int]:
    return load_vmoe(model, path)


register_loader("vmoe_", _load_backbone)
