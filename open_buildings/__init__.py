"""open-buildings: building footprints from 50 cm satellite imagery (Open Buildings method)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("open-buildings-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
