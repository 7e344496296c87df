"""open-buildings: building footprints from 50 cm satellite imagery (Open Buildings method)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("open-buildings-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):  # noqa: ANN202 - lazy, so that `import open_buildings` stays light
    """``open_buildings.detect`` and ``open_buildings.download`` (:mod:`open_buildings.api`)."""
    if name in ("detect", "download"):
        from open_buildings import api

        return getattr(api, name)
    raise AttributeError(f"module 'open_buildings' has no attribute {name!r}")
