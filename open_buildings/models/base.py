"""The common wrapper every segmentation model is served through.

A :class:`BuildingModel` takes imagery scaled to [0, 1] of any height and width and returns
per-pixel logits of the same height and width. It owns the input contract (band count,
normalisation, size divisibility), so a backbone only maps normalised, padded images to logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from open_buildings.models.input_spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec, describe_bands
from open_buildings.models.padding import pad_to_multiple

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BuildingModel", "InputSpec", "describe_bands"]


class BuildingModel(nn.Module):
    """A segmentation network behind one input/output contract.

    ``forward`` accepts ``(B, bands, H, W)`` floats scaled to [0, 1] for any ``H, W``; it
    normalises with the spec's mean/std, pads to a multiple of ``input_spec.divisor`` (reflect
    where the image is large enough, replicate otherwise), runs ``net`` and crops back, so the
    logits are ``(B, len(output_channels), H, W)``.

    Args:
        net: Any module mapping normalised ``(B, bands, H', W')`` to ``(B, C, H', W')`` with
            ``H', W'`` multiples of ``input_spec.divisor``.
        name: Registry name of the model.
        config: A JSON-serialisable dict holding everything needed to rebuild ``net`` with
            ``build_model(name, **config)``.
        input_spec: The input contract.
        output_channels: Names of the output channels, in order.
        pad_mode: ``"reflect"`` (default) or ``"constant"`` (zeros, after normalisation).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        config: dict[str, Any],
        input_spec: InputSpec,
        output_channels: tuple[str, ...],
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        if pad_mode not in ("reflect", "constant"):
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
        if not output_channels:
            raise ValueError("output_channels must name at least one channel")
        self.net = net
        self.name = name
        self.config = dict(config)
        self.input_spec = input_spec
        self.output_channels = tuple(output_channels)
        self.pad_mode = pad_mode
        shape = (1, input_spec.bands, 1, 1)
        self.register_buffer(
            "mean", torch.tensor(input_spec.mean, dtype=torch.float32).view(shape), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(input_spec.std, dtype=torch.float32).view(shape), persistent=False
        )

    def aux_loss(self) -> torch.Tensor | None:
        """Return the auxiliary losses the last forward left behind, summed, or ``None``.

        A submodule that adds a term to the training loss (V-MoE's importance and load losses)
        stores it as ``last_aux_loss`` during its forward; modules without one are skipped.
        """
        terms = [
            m.last_aux_loss
            for m in self.net.modules()
            if isinstance(getattr(m, "last_aux_loss", None), torch.Tensor)
        ]
        return torch.stack([t.float() for t in terms]).sum() if terms else None

    def num_parameters(self) -> int:
        """Return the number of parameters (trainable or not)."""
        return sum(p.numel() for p in self.parameters())

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` fits the input contract.

        Args:
            x: The candidate input batch.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"model {self.name} expects a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(
                f"model {self.name} expects a batch shaped (B, bands, H, W), got shape "
                f"{tuple(x.shape)}; add a batch dimension with x[None]"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"model {self.name} expects floats scaled to [0, 1], got {x.dtype}; "
                "divide integer imagery by its maximum (e.g. 255) first"
            )
        bands = self.input_spec.bands
        if x.shape[1] != bands:
            raise ValueError(
                f"model {self.name} expects {describe_bands(bands)}, got {x.shape[1]}; "
                "map the bands with --bands"
            )
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"model {self.name} got an empty image of shape {tuple(x.shape)}")

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalise ``x`` (scaled to [0, 1]) and pad it to the size divisor, as ``forward``
        does before the network; return it and the ``(top, left)`` padding."""
        x = (x.to(self.mean.dtype) - self.mean) / self.std
        mode = "constant" if self.pad_mode == "constant" else "reflect"
        return pad_to_multiple(x, self.input_spec.divisor, mode=mode, centre=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model.

        Args:
            x: ``(B, bands, H, W)`` float tensor scaled to [0, 1].

        Returns:
            Logits ``(B, len(output_channels), H, W)``.
        """
        self.check_input(x)
        height, width = x.shape[-2:]
        x, (top, left) = self.prepare(x)
        out = self.net(x)
        if out.ndim != 4 or out.shape[1] != len(self.output_channels):
            raise RuntimeError(
                f"model {self.name}'s network returned shape {tuple(out.shape)}, expected "
                f"(B, {len(self.output_channels)}, H, W)"
            )
        return out[..., top : top + height, left : left + width]

    def extra_repr(self) -> str:
        """Summarise the wrapper's contract for ``print(model)``."""
        return (
            f"name={self.name!r}, bands={self.input_spec.bands}, "
            f"divisor={self.input_spec.divisor}, output_channels={self.output_channels}"
        )
