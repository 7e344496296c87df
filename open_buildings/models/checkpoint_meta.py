"""A checkpoint's metadata, sha256 and calibration, read without torch.

Everything here reads the safetensors header or hashes the file: the light install (no PyTorch)
runs a shipped ONNX export with the thresholds and input ranges the checkpoint carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import safe_open

from open_buildings.errors import CheckpointError

FORMAT_VERSION = "1"
#: The metadata key of a checkpoint's calibrated confidence thresholds.
OPERATING_POINTS = "operating_points"
#: The metadata key of the ranges of the training imagery's tile statistics.
INPUT_RANGES = "input_ranges"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks.

    Args:
        path: The file.

    Returns:
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: Path) -> Path:
    """Return the ``<file>.sha256`` sidecar's path."""
    return path.with_name(path.name + ".sha256")


def write_sidecar(path: Path) -> str:
    """Write ``path``'s sha256 into its ``sha256sum``-format sidecar, atomically; return it."""
    sha = file_sha256(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".sha256.tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"{sha}  {path.name}\n")
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shipped file's sidecar from other users
    os.replace(tmp, sidecar_path(path))
    return sha


def sidecar_matches(path: Path) -> bool:
    """True when ``path`` and its sidecar exist and the sidecar records ``path``'s sha256."""
    if not (path.is_file() and sidecar_path(path).is_file()):
        return False
    try:
        return read_sidecar(path) == file_sha256(path)
    except CheckpointError:  # a sidecar that is not one
        return False


def read_sidecar(path: Path) -> str:
    """Return the sha256 a file's ``sha256sum``-format sidecar records for it.

    Raises:
        CheckpointError: no sidecar, one in another format, or one that names another file.
    """
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise CheckpointError(
            f"no sha256 sidecar {sidecar} next to {path}; pass expected_sha256=<hex> from the "
            "model's manifest, or verify_sidecar=False if you trust the file"
        )
    fields = sidecar.read_text(encoding="utf-8").split()
    if not fields or len(fields[0]) != 64:
        raise CheckpointError(f"{sidecar} is not in sha256sum format ('<64 hex>  <filename>')")
    if len(fields) > 1 and fields[-1].lstrip("*") != path.name:
        raise CheckpointError(
            f"{sidecar} describes {fields[-1]!r}, not {path.name!r}; it belongs to another file"
        )
    return fields[0].lower()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a checkpoint's safetensors metadata without loading tensors.

    Args:
        path: The ``.safetensors`` file.

    Returns:
        The string metadata.

    Raises:
        CheckpointError: The file is not a safetensors file or lacks the required fields.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); checkpoints must be written "
            "by save_checkpoint (pickled .pt/.pth files are not accepted)"
        ) from exc
    missing = [k for k in ("format_version", "name", "config") if k not in metadata]
    if missing:
        raise CheckpointError(
            f"{path} is safetensors but lacks the metadata {missing}; it was not written by "
            "save_checkpoint, so the model cannot be rebuilt from it"
        )
    if metadata["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format_version {metadata['format_version']!r}; this "
            f"version of open_buildings reads {FORMAT_VERSION!r}"
        )
    return metadata


def _json_entry(path: str | os.PathLike[str], key: str, what: str) -> Any:
    """One JSON metadata entry of a checkpoint, or None when it has none."""
    metadata = read_metadata(path)
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: {what} are not valid JSON ({exc})") from None


def read_operating_points(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return a checkpoint's calibrated confidence thresholds, or None if it carries none.

    They are measured on labelled data the model never trained on
    (``training.calibrate.operating_points``): ``best_f1`` (``threshold``, ``precision``,
    ``recall``, ``f1``), ``precision_targets`` (one entry per target precision, its ``threshold``
    None when unreachable) and ``measured_on``.

    Raises:
        CheckpointError: The file is not a checkpoint, or the thresholds are not valid JSON.
    """
    points = _json_entry(path, OPERATING_POINTS, "the operating points")
    if points is None:
        return None
    best = points.get("best_f1") if isinstance(points, dict) else None
    if not isinstance(best, dict) or not isinstance(best.get("threshold"), int | float):
        raise CheckpointError(f"{path}: the operating points lack best_f1.threshold")
    return points


def read_input_ranges(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the ranges of a checkpoint's training-imagery statistics, or None if it has none.

    ``{"ranges": {stat: [low, high]}, "measured_on", "tiles"}``, as
    ``training.calibrate.input_ranges`` measures them (``pipelines.domain``).

    Raises:
        CheckpointError: The file is not a checkpoint, or the ranges are not valid JSON.
    """
    ranges = _json_entry(path, INPUT_RANGES, "the input ranges")
    if ranges is None:
        return None
    if not isinstance(ranges, dict) or not isinstance(ranges.get("ranges"), dict):
        raise CheckpointError(f"{path}: the input ranges lack their 'ranges' mapping")
    return ranges
