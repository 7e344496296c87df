"""A model's image representation: its encoder's deepest features, one pooled vector per image.

Every family's network keeps its encoder as ``net.encoder``: the smp U-Nets return a list of
feature maps (the deepest is average-pooled), the ViT families an ``EncoderOutput`` whose final
tokens are averaged. The images go through the model's own normalisation and padding
(``BuildingModel.prepare``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from open_buildings.models.base import BuildingModel


class PooledEncoder(nn.Module):
    """``uint8``-scaled images ``(B, 3, H, W)`` in [0, 1] -> one feature vector per image."""

    def __init__(self, model: BuildingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(B, D)`` features of images scaled to [0, 1]."""
        x, _ = self.model.prepare(x)
        out = self.model.net.encoder(x)
        if hasattr(out, "tokens"):  # the ViT families' EncoderOutput
            return out.tokens.mean(dim=1)
        return out[-1].mean(dim=(2, 3))

    def width(self, size: int) -> int:
        """The feature width ``D`` for images of ``size`` pixels (a forward of zeros in eval
        mode, so that no BatchNorm statistic moves)."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            width = int(self(torch.zeros(1, 3, size, size)).shape[1])
        self.train(was_training)
        return width


def encoder_features(model: BuildingModel, images: np.ndarray, *, batch: int = 32) -> np.ndarray:
    """Embed uint8 images ``(N, 3, H, W)`` with the model's encoder; return float32 ``(N, D)``."""
    encoder = PooledEncoder(model).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch]).float() / 255.0
            out.append(encoder(x).float().numpy())
    return np.concatenate(out).astype(np.float32)
