"""Shipped data: the sample (``geo/``), the model zoo (``models/``) and the map's assets (``web/``).

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
        kind: ``"geo"`` (reference geodata), ``"models"`` (the model zoo) or ``"web"`` (the
            map's script and style).
        *parts: path components below that folder, e.g. ``("sample", "region.geojson")``.

    Raises:
        ValueError: if ``kind`` is not one of the shipped folders.
    """
    if kind not in ("geo", "models", "web"):
        raise ValueError(f"unknown resource kind {kind!r}; use 'geo', 'models' or 'web'")
    try:
        node: Traversable = files(f"open_buildings.resources.{kind}")
    except ModuleNotFoundError:
        # An editable install maps the package onto the source tree's top-level folder, but
        # setuptools' editable finder does not resolve these data-only namespace packages.
        node = _SOURCE_ROOT / kind
    for part in parts:
        node = node.joinpath(part)
    return node
