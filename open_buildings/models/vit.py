"""Plain ViT encoders (SigLIP, the vision tower of PaliGemma) with a dense decoder for 50 cm tiles.

The encoder is the ViT of Dosovitskiy et al. in the variant SigLIP uses (no class token, tanh-GELU
MLP, a final LayerNorm) and, by config, the CLIP variant OWL-ViT uses (class token, a LayerNorm
before the blocks, quick-GELU). The same :class:`Block` is what V-MoE swaps MLPs in.

The decoder is DPT-style (Ranftl et al. 2021): token maps from four blocks are reassembled to 4x,
2x, 1x and 1/2x the patch grid, fused top-down with residual conv units, then upsampled in two
steps to full resolution. A 50 cm tile's buildings are a few patches wide, so the last two steps
also take a light convolutional view of the image itself (at 1/2 and full resolution) to place
the edges; the instance heads are the U-Net's (:data:`~open_buildings.models.heads.CHANNELS`).

Registered models (random weights; :mod:`open_buildings.models.convert.siglip` loads SigLIP
checkpoints):

- ``vit_siglip_so400m_14``: SigLIP So400m/14 (width 1152, depth 27, MLP 4304, 16 heads), the
  vision tower of PaliGemma.
- ``vit_siglip_small``: a ViT-S/16 shape (width 384, depth 12, 6 heads) in the SigLIP variant.
- ``vit_siglip_tiny``: width 64, depth 4, for tests and smoke runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from open_buildings.errors import ConfigError
from open_buildings.models.base import InputSpec
from open_buildings.models.dense_decoder import DenseDecoder
from open_buildings.models.heads import CHANNELS
from open_buildings.models.padding import pad_to_multiple
from open_buildings.models.registry import register_family

__all__ = [
    "SIGLIP_INPUT",
    "Block",
    "DenseDecoder",
    "EncoderOutput",
    "ViTConfig",
    "ViTEncoder",
    "ViTSegmenter",
    "build_vit_segmenter",
    "feature_layers",
    "resample_pos_embed",
    "siglip_input_spec",
]

ACTIVATIONS = ("gelu_tanh", "quick_gelu", "gelu")


@dataclass(frozen=True)
class ViTConfig:
    """A ViT encoder and its dense decoder.

    Attributes:
        width: Token width.
        depth: Number of transformer blocks.
        mlp_dim: Hidden width of each block's MLP.
        heads: Attention heads (must divide ``width``).
        patch: Patch size in pixels; also the model's input divisor.
        pretrain_size: Image side the position embeddings were made for; their grid is
            ``pretrain_size // patch`` squared, interpolated to any other input size.
        class_token: Prepend a learned class token (CLIP/OWL-ViT); SigLIP has none.
        pre_norm: LayerNorm the embedded tokens before the blocks (CLIP's ``ln_pre``).
        act: MLP activation: ``"gelu_tanh"`` (SigLIP), ``"quick_gelu"`` (CLIP) or ``"gelu"``.
        ln_eps: LayerNorm epsilon (1e-6 in SigLIP, 1e-5 in CLIP).
        feature_layers: Four 0-based block indices whose outputs feed the decoder; empty picks
            the blocks at 1/4, 1/2, 3/4 and the end of the depth.
        decoder_channels: Width of the decoder's fusion stages.
        detail_channels: Width of the decoder's full-resolution image branch.
    """

    width: int = 384
    depth: int = 12
    mlp_dim: int = 1536
    heads: int = 6
    patch: int = 16
    pretrain_size: int = 224
    class_token: bool = False
    pre_norm: bool = False
    act: str = "gelu_tanh"
    ln_eps: float = 1e-6
    feature_layers: tuple[int, ...] = ()
    decoder_channels: int = 128
    detail_channels: int = 32


def feature_layers(config: ViTConfig) -> tuple[int, ...]:
    """Return the four block indices that feed the decoder.

    Args:
        config: The ViT config.

    Returns:
        Four increasing 0-based block indices.

    Raises:
        ConfigError: The configured indices are not four increasing blocks of this depth.
    """
    if not config.feature_layers:
        d = config.depth
        return tuple(max(0, round(d * q / 4) - 1) for q in (1, 2, 3, 4))
    layers = tuple(int(i) for i in config.feature_layers)
    if len(layers) != 4 or list(layers) != sorted(set(layers)) or layers[0] < 0:
        raise ConfigError(f"feature_layers must be 4 increasing block indices, got {list(layers)}")
    if layers[-1] >= config.depth:
        raise ConfigError(
            f"feature_layers {list(layers)} name a block past the depth ({config.depth} blocks, "
            f"indices 0 to {config.depth - 1})"
        )
    return layers


def check_vit_config(config: ViTConfig) -> None:
    """Raise :class:`ConfigError` unless the config describes a buildable ViT.

    Args:
        config: The config to check.
    """
    if config.width % config.heads:
        raise ConfigError(f"heads ({config.heads}) must divide width ({config.width})")
    if config.act not in ACTIVATIONS:
        raise ConfigError(f"act must be one of {', '.join(ACTIVATIONS)}, got {config.act!r}")
    if config.patch < 1 or config.pretrain_size < config.patch:
        raise ConfigError(
            f"patch ({config.patch}) must be >= 1 and at most "
            f"pretrain_size ({config.pretrain_size})"
        )
    if config.depth < 1:
        raise ConfigError(f"depth must be >= 1, got {config.depth}")
    feature_layers(config)


def resample_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Interpolate a square grid of position embeddings to another grid size.

    Bicubic, ``align_corners=False``: what timm's ``resample_abs_pos_embed`` and the Hugging Face
    ``interpolate_pos_encoding`` of SigLIP/CLIP do.

    Args:
        pos: ``(1, g*g, C)`` position embeddings of the patch tokens only.
        grid: Target ``(rows, cols)``.

    Returns:
        ``(1, rows*cols, C)``; ``pos`` itself when the grid is unchanged.
    """
    n, channels = pos.shape[1], pos.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"position embeddings of {n} tokens are not a square grid")
    if (side, side) == tuple(grid):
        return pos
    square = pos.reshape(1, side, side, channels).permute(0, 3, 1, 2)
    resized = F.interpolate(square.float(), size=grid, mode="bicubic", align_corners=False).to(
        pos.dtype
    )
    return resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], channels)


class QuickGELU(nn.Module):
    """CLIP's ``x * sigmoid(1.702 x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation."""
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """Return the MLP activation a config names (one of :data:`ACTIVATIONS`)."""
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    return nn.GELU()


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection.

    Args:
        width: Token width.
        heads: Number of heads.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all tokens of each image: ``(B, N, C) -> (B, N, C)``."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """The transformer MLP: ``fc1 -> act -> fc2``.

    Args:
        width: Token width.
        hidden: Hidden width.
        act: Activation name (see :data:`ACTIVATIONS`).
    """

    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP token-wise."""
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    ``mlp`` is any module mapping ``(B, N, C)`` to ``(B, N, C)``; V-MoE puts a
    mixture-of-experts layer there.

    Args:
        config: The ViT config (width, heads, mlp_dim, act, ln_eps).
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.ln_eps)
        self.attn = Attention(config.width, config.heads)
        self.norm2 = nn.LayerNorm(config.width, eps=config.ln_eps)
        self.mlp: nn.Module = Mlp(config.width, config.mlp_dim, config.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block on ``(B, N, C)`` tokens."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EncoderOutput(NamedTuple):
    """What :meth:`ViTEncoder.forward` returns.

    Attributes:
        tokens: ``(B, prefix + rows*cols, C)`` output of the last block after the final norm
            (the class token first when there is one).
        features: The patch tokens (no class token) after each block in ``feature_layers``,
            each ``(B, rows*cols, C)``; a feature taken after the last block is taken after the
            final norm too (the patch part of ``tokens``), so every weight reaches the decoder.
        grid: ``(rows, cols)`` of the patch grid.
    """

    tokens: torch.Tensor
    features: list[torch.Tensor]
    grid: tuple[int, int]


class ViTEncoder(nn.Module):
    """A ViT over images whose sides are multiples of the patch size.

    Args:
        config: The architecture.
        in_chans: Input bands.
    """

    def __init__(self, config: ViTConfig, in_chans: int = 3) -> None:
        super().__init__()
        check_vit_config(config)
        self.config = config
        self.prefix = 1 if config.class_token else 0
        self.feature_layers = feature_layers(config)
        w = config.width
        self.patch_embed = nn.Conv2d(in_chans, w, config.patch, stride=config.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w)) if config.class_token else None
        side = config.pretrain_size // config.patch
        self.pos_embed = nn.Parameter(torch.randn(1, self.prefix + side * side, w) * 0.02)
        self.norm_pre = nn.LayerNorm(w, eps=config.ln_eps) if config.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(w, eps=config.ln_eps)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patchify, add (interpolated) position embeddings and the class token.

        Args:
            x: ``(B, bands, H, W)`` normalised images, sides multiples of ``patch``.

        Returns:
            The ``(B, prefix + rows*cols, C)`` tokens before the blocks, and ``(rows, cols)``.
        """
        p = self.config.patch
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"ViT input sides must be multiples of the patch size {p}, got "
                f"{tuple(x.shape[-2:])} (BuildingModel pads; call it rather than the net)"
            )
        tokens = self.patch_embed(x)
        grid = (tokens.shape[-2], tokens.shape[-1])
        tokens = tokens.flatten(2).transpose(1, 2)
        pos = self.pos_embed
        patch_pos = resample_pos_embed(pos[:, self.prefix :], grid)
        tokens = tokens + patch_pos
        if self.cls_token is not None:
            cls = (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
        return self.norm_pre(tokens), grid

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode images.

        Args:
            x: ``(B, bands, H, W)`` normalised images, sides multiples of ``patch``.

        Returns:
            The final tokens, the intermediate patch-token features and the grid.
        """
        tokens, grid = self.embed(x)
        # Keyed by block: the default layers of a net shallower than 4 blocks repeat a block.
        captured: dict[int, torch.Tensor] = {}
        wanted = set(self.feature_layers)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in wanted and i != last:
                captured[i] = tokens[:, self.prefix :]
        tokens = self.norm(tokens)
        if last in wanted:
            captured[last] = tokens[:, self.prefix :]
        return EncoderOutput(tokens, [captured[i] for i in self.feature_layers], grid)


class ViTSegmenter(nn.Module):
    """An encoder that returns :class:`EncoderOutput`, and a :class:`DenseDecoder`.

    Args:
        encoder: A :class:`ViTEncoder` or anything with the same output (OWL-ViT, V-MoE).
        decoder: The dense decoder.
    """

    def __init__(self, encoder: nn.Module, decoder: DenseDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised ``(B, bands, H, W)`` images to ``(B, C, H, W)`` logits.

        Sides that are not multiples of the patch are padded (replicate) and cropped back, so a
        config override of ``patch`` never breaks the registry's input divisor.
        """
        height, width = x.shape[-2:]
        x, _ = pad_to_multiple(x, self.encoder.config.patch, mode="replicate", centre=False)
        out = self.encoder(x)
        return self.decoder(out.features, out.grid, x)[..., :height, :width]


def build_vit_segmenter(config: ViTConfig) -> ViTSegmenter:
    """Build a SigLIP-style ViT with the dense decoder and the instance heads.

    Args:
        config: The architecture.

    Returns:
        The network (expects normalised input with sides divisible by ``config.patch``).
    """
    encoder = ViTEncoder(config)
    decoder = DenseDecoder(config.width, config.decoder_channels, config.detail_channels)
    return ViTSegmenter(encoder, decoder)


#: SigLIP normalises images to [-1, 1].
SIGLIP_INPUT = InputSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), divisor=16)


def siglip_input_spec(config: ViTConfig) -> InputSpec:
    """Return :data:`SIGLIP_INPUT` with the config's patch size as the divisor.

    Args:
        config: A ViT (or V-MoE) config.

    Returns:
        The input contract of a model built from it.
    """
    return InputSpec(mean=SIGLIP_INPUT.mean, std=SIGLIP_INPUT.std, divisor=config.patch)


SIGLIP_SO400M_14 = ViTConfig(
    width=1152, depth=27, mlp_dim=4304, heads=16, patch=14, pretrain_size=224, decoder_channels=256
)
SIGLIP_SMALL = ViTConfig(width=384, depth=12, mlp_dim=1536, heads=6, patch=16, pretrain_size=224)
SIGLIP_TINY = ViTConfig(
    width=64,
    depth=4,
    mlp_dim=128,
    heads=4,
    patch=16,
    pretrain_size=64,
    decoder_channels=32,
    detail_channels=8,
)

_MODELS = [
    (
        "vit_siglip_so400m_14",
        SIGLIP_SO400M_14,
        "SigLIP So400m/14 ViT (PaliGemma's vision tower) + DPT decoder",
    ),
    ("vit_siglip_small", SIGLIP_SMALL, "SigLIP-style ViT-S/16 + DPT decoder"),
    ("vit_siglip_tiny", SIGLIP_TINY, "SigLIP-style ViT, width 64, depth 4: tests and smoke runs"),
]


def _load_pretrained(model: nn.Module, source: str) -> dict[str, int]:
    """A SigLIP/PaliGemma vision tower (``models.convert.siglip.load_siglip``)."""
    from open_buildings.models.convert.siglip import load_siglip

    return load_siglip(model, source)


register_family(
    _MODELS,
    build_vit_segmenter,
    input_spec=siglip_input_spec,
    output_channels=CHANNELS,
    load_pretrained=_load_pretrained,
)
