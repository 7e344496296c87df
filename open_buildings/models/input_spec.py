"""What a model expects as input: bands, normalisation, size divisor, pixel size (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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
