"""The dense decoder of the ViT backbones: DPT-style reassembly and fusion to 50 cm logits.

Token maps from four encoder blocks are reassembled to 4x, 2x, 1x and 1/2x the patch grid, fused
coarse to fine (Ranftl et al. 2021), then upsampled to the input resolution with a light image
branch, and the instance heads' channels are predicted per pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from open_buildings.models.heads import CHANNELS


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _ResidualUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.skip = _ResidualUnit(channels)
        self.out = _ResidualUnit(channels)

    def forward(self, coarse: torch.Tensor | None, skip: torch.Tensor) -> torch.Tensor:
        x = self.skip(skip)
        if coarse is not None:
            x = x + F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(x)


class DenseDecoder(nn.Module):
    """DPT-style fusion of four token maps, then progressive upsampling to full resolution.

    Args:
        width: Token width of the encoder.
        channels: Fusion width.
        detail_channels: Width of the image branch at full resolution (twice that at 1/2).
        out_channels: Output channels (the instance heads).
        in_chans: Input bands (the image branch reads the normalised image).
    """

    def __init__(
        self,
        width: int,
        channels: int = 128,
        detail_channels: int = 32,
        out_channels: int = len(CHANNELS),
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        c = channels
        self.reassemble = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(width, c, 1), nn.ConvTranspose2d(c, c, 4, stride=4)),
                nn.Sequential(nn.Conv2d(width, c, 1), nn.ConvTranspose2d(c, c, 2, stride=2)),
                nn.Conv2d(width, c, 1),
                nn.Sequential(nn.Conv2d(width, c, 1), nn.Conv2d(c, c, 3, stride=2, padding=1)),
            ]
        )
        self.fusions = nn.ModuleList(_Fusion(c) for _ in range(4))
        d = detail_channels
        self.detail_full = _conv_bn_relu(in_chans, d)
        self.detail_half = _conv_bn_relu(d, 2 * d, stride=2)
        self.up_half = _conv_bn_relu(c + 2 * d, 2 * d)
        self.up_full = _conv_bn_relu(2 * d + d, d)
        self.head = nn.Conv2d(d, out_channels, 1)

    def forward(
        self, features: list[torch.Tensor], grid: tuple[int, int], image: torch.Tensor
    ) -> torch.Tensor:
        """Decode.

        Args:
            features: Four ``(B, rows*cols, width)`` patch-token maps, shallow to deep.
            grid: ``(rows, cols)``.
            image: The normalised ``(B, bands, H, W)`` input.

        Returns:
            ``(B, out_channels, H, W)`` logits.
        """
        if len(features) != 4:
            raise ValueError(f"DenseDecoder needs 4 feature maps, got {len(features)}")
        maps = [
            layer(f.transpose(1, 2).reshape(f.shape[0], f.shape[2], *grid))
            for layer, f in zip(self.reassemble, features, strict=True)
        ]
        x = None
        for fusion, skip in zip(reversed(self.fusions), reversed(maps), strict=True):
            x = fusion(x, skip)
        full = self.detail_full(image)
        half = self.detail_half(full)
        x = F.interpolate(x, size=half.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up_half(torch.cat([x, half], dim=1))
        x = F.interpolate(x, size=full.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up_full(torch.cat([x, full], dim=1))
        return self.head(x)
