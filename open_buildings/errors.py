"""The project's exception classes.

Each subclasses the builtin that fits, so callers can catch either. Every message says what was
wrong and what to do about it.
"""


class OpenBuildingsError(Exception):
    """Base class for every error this project raises on purpose."""


class RegionError(OpenBuildingsError, ValueError):
    """A region file (GeoJSON) is malformed, invalid, or too large to process."""


class ImageryError(OpenBuildingsError, ValueError):
    """An imagery source cannot be read, is not allowed, or its bands cannot be mapped to RGB."""


class OutputExistsError(OpenBuildingsError, FileExistsError):
    """An output file already exists and overwriting was not asked for."""


class ConfigError(OpenBuildingsError, ValueError):
    """A configuration value or key is wrong."""


class EvaluationError(OpenBuildingsError, ValueError):
    """Predictions or ground truth cannot be evaluated (unreadable, wrong geometry, no CRS...)."""


class ShardError(OpenBuildingsError, ValueError):
    """A footprint shard (``.csv.gz`` / ``.parquet``) is damaged: truncated, not the format its
    name says, missing a column, or holding a row whose geometry cannot be read."""


class CheckpointError(OpenBuildingsError, ValueError):
    """A checkpoint is corrupt, not safetensors, fails its sha256, or does not fit its model."""


class InferenceError(OpenBuildingsError, RuntimeError):
    """Inference cannot run as asked: no usable model, or no GPU where one was expected."""


class MissingExtraError(OpenBuildingsError, ImportError):
    """A command needs packages of an extra that is not installed (PyTorch: ``[train]``)."""
