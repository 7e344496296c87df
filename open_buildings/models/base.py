"""The common wrapper every segmentation model is served through.

A :class:`BuildingModel` takes imagery scaled to [0, 1] of any height and width and returns
per-pixel logits of the same height and width. It owns the input contract (band count,
normalisation, size divisibility), so a backbone only maps normalised, padded images to logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from open_buildings.models.padding import pad_to_multiple

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_BAND_NAMES = {1: "grayscale", 3: "RGB", 4: "RGB+NIR"}


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input.

    Attributes:
        bands: Number of input bands (3 = RGB, in that order).
        mean: Per-band mean subtracted after scaling to [0, 1].
        std: Per-band standard deviation divided by after subtracting the mean.
        divisor: The backbone needs height and width divisible by this; the wrapper pads.
        pixel_size_m: Ground sampling distance the model was trained for, in metres.
    """

    bands: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    divisor: int = 32
    pixel_size_m: float = 0.5

    def __post_init__(self) -> None:
        """Check that the fields agree with each other."""
        if self.bands < 1:
            raise ValueError(f"InputSpec.bands must be >= 1, got {self.bands}")
        if len(self.mean) != self.bands or len(self.std) != self.bands:
            raise ValueError(
                f"InputSpec has {self.bands} bands but {len(self.mean)} means and "
                f"{len(self.std)} stds; give one of each per band"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"InputSpec.std must be positive, got {self.std}")
        if self.divisor < 1:
            raise ValueError(f"InputSpec.divisor must be >= 1, got {self.divisor}")
        if self.pixel_size_m <= 0:
            raise ValueError(f"InputSpec.pixel_size_m must be positive, got {self.pixel_size_m}")

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a JSON-serialisable dict (tuples become lists)."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Args:
            d: A dict with the dataclass fields.

        Returns:
            The spec.
        """
        return cls(
            bands=int(d["bands"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            divisor=int(d["divisor"]),
            pixel_size_m=float(d["pixel_size_m"]),
        )


def describe_bands(bands: int) -> str:
    """Name a band count for error messages, e.g. ``"3 bands (RGB)"``.

    Args:
        bands: Number of bands.

    Returns:
        A short human-readable description.
    """
    name = _BAND_NAMES.get(bands)
    return f"{bands} bands ({name})" if name else f"{bands} bands"


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model.

        Args:
            x: ``(B, bands, H, W)`` float tensor scaled to [0, 1].

        Returns:
            Logits ``(B, len(output_channels), H, W)``.
        """
        self.check_input(x)
        height, width = x.shape[-2:]
        x = (x.to(self.mean.dtype) - self.mean) / self.std
        mode = "constant" if self.pad_mode == "constant" else "reflect"
        x, (top, left) = pad_to_multiple(x, self.input_spec.divisor, mode=mode, centre=True)
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
