"""Shipped reference data: the sample region and imagery (``geo/``) and the model zoo (``models/``).

In a clone these are the top-level ``geo/`` and ``models/`` folders; an installed wheel carries them
inside this package, so the same call works in both.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def resource(kind: str, *parts: str) -> Traversable:
    """Return a shipped file or folder.

    Args:
        kind: ``"geo"`` (reference geodata) or ``"models"`` (the model zoo).
        *parts: path components below that folder, e.g. ``("sample", "region.geojson")``.

    Raises:
        ValueError: if ``kind`` is not one of the two shipped folders.
    """
    if kind not in ("geo", "models"):
        raise ValueError(f"unknown resource kind {kind!r}; use 'geo' or 'models'")
    try:
        node: Traversable = files(f"open_buildings.resources.{kind}")
    except ModuleNotFoundError:
        # An editable install maps the package onto the source tree's top-level folder, but
        # setuptools' editable finder does not resolve these data-only namespace packages.
        node = _SOURCE_ROOT / kind
    for part in parts:
        node = node.joinpath(part)
    return node
