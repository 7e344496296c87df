"""Tensors of converted checkpoints, read lazily by name: shared by the SigLIP and V-MoE loaders.

A loader opens its file format into :class:`NamedTensors` (the names of every tensor, and a
function reading one), then takes the tensors it converts; the rest are reported as unused.
:func:`open_npz` reads an ``.npz`` of a flattened flax parameter tree, as both
:mod:`.siglip_layouts` (big_vision) and :mod:`.vmoe` (an export) accept. Messages name the
model the file should hold (the ``what`` of each call), so they read as the loader's own.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from open_buildings.errors import CheckpointError

__all__ = ["NamedTensors", "array_to_tensor", "layer_indices", "open_npz", "unreadable"]

_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


class NamedTensors:
    """Names of every tensor in a checkpoint file and lazy access to the ones wanted.

    Attributes:
        path: The file, for messages.
        names: Every tensor name in the file.
        what: What the file should hold, for messages (e.g. ``"SigLIP vision tower"``).
        taken: Names read with :meth:`take` so far.
    """

    def __init__(
        self, path: Path, names: list[str], get: Callable[[str], torch.Tensor], *, what: str
    ) -> None:
        """Wrap a file's tensor names and a reader.

        Args:
            path: The file, for messages.
            names: Every tensor name in the file.
            get: Reads the tensor of a name (only names from ``names`` are asked for).
            what: What the file should hold, for messages.
        """
        self.path = path
        self.names = names
        self.what = what
        self._get = get
        self._name_set = set(names)
        self.taken: set[str] = set()

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Read a tensor and mark it used.

        Args:
            name: The tensor's name in the file.
            shape: The shape the rest of the file implies, checked when given.

        Returns:
            The tensor.

        Raises:
            CheckpointError: The tensor is missing or has another shape.
        """
        if name not in self._name_set:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} is missing; the {self.what} is incomplete "
                "(a truncated download or export, or a shard left out?)"
            )
        tensor = self._get(name)
        if shape is not None and tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape} "
                f"from its other tensors; the file is not a consistent {self.what}"
            )
        self.taken.add(name)
        return tensor

    def has(self, name: str) -> bool:
        """Return whether the file holds a tensor of this name."""
        return name in self._name_set

    def unused(self) -> list[str]:
        """Return the names not taken so far, sorted."""
        return sorted(self._name_set - self.taken)


def unreadable(
    path: Path, as_what: str, detail: BaseException | str, remedy: str
) -> CheckpointError:
    """Build the error for a file that cannot be parsed.

    Args:
        path: The file.
        as_what: The format it was read as (e.g. ``"safetensors"``, ``"a big_vision .npz"``).
        detail: The exception raised while reading, or a description of what was wrong.
        remedy: What to do, e.g. ``"download it again, or pass ..."``.

    Returns:
        The error, to be raised (``from`` the exception, when there is one).
    """
    text = detail if isinstance(detail, str) else f"{type(detail).__name__}: {detail}"
    return CheckpointError(
        f"{path} could not be read as {as_what} ({text}); the file is corrupt or truncated: "
        f"{remedy}"
    )


def array_to_tensor(
    path: Path, name: str, array: np.ndarray, *, what: str, bfloat16: bool = False
) -> torch.Tensor:
    """Convert a floating-point weight read from a file to a tensor.

    Args:
        path: The file, for messages.
        name: The array's name, for messages.
        array: The array.
        what: What the file should hold, for messages.
        bfloat16: The array holds bfloat16 bits as 2-byte integers. Raw 2-byte records (how
            numpy saves bfloat16 without ml_dtypes) are taken as bfloat16 in any case.

    Returns:
        The tensor (bfloat16, or the array's float dtype).

    Raises:
        CheckpointError: The array is not floating point.
    """
    if bfloat16 or (array.dtype.kind == "V" and array.dtype.itemsize == 2):
        bits = np.ascontiguousarray(array).view(np.int16)
        return torch.from_numpy(bits.copy()).view(torch.bfloat16)
    if array.dtype.kind != "f":
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {array.dtype}, not floating point; it is not a "
            f"weight of a {what}"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def open_npz(path: Path, *, what: str, as_what: str, remedy: str) -> NamedTensors:
    """Open an ``.npz`` of a flattened parameter tree; arrays are read when taken.

    Names are given with ``/`` between the tree's levels whether the file joins them with ``/``
    or ``.`` (flax and big_vision names contain neither). Nothing is unpickled.

    Args:
        path: The file.
        what: What it should hold, for messages (e.g. ``"V-MoE checkpoint"``).
        as_what: The format, for messages (e.g. ``"a big_vision .npz"``).
        remedy: What to do when it cannot be read (see :func:`unreadable`).

    Returns:
        The file's arrays, as tensors.

    Raises:
        CheckpointError: The file is not a readable archive of named arrays (also raised when a
            damaged array is taken).
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as exc:
        raise unreadable(path, as_what, exc, remedy) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path} holds a single array, not {as_what} of named parameters")
    by_name = {name.replace(".", "/"): name for name in archive.files}

    def get(name: str) -> torch.Tensor:
        try:
            array = archive[by_name[name]]
        except _NPZ_ERRORS as exc:
            raise unreadable(path, as_what, exc, remedy) from exc
        return array_to_tensor(path, name, array, what=what)

    return NamedTensors(path, list(by_name), get, what=what)


def layer_indices(tensors: NamedTensors, pattern: str) -> list[int]:
    """Return the indices of a checkpoint's numbered blocks, checking that none is missing.

    Args:
        tensors: The file's tensors.
        pattern: A regular expression matched at the start of names; group 1 is the index.

    Returns:
        ``0 .. depth - 1``.

    Raises:
        CheckpointError: No name matches, or some index below the largest is absent.
    """
    regex = re.compile(pattern)
    found = {int(m.group(1)) for name in tensors.names if (m := regex.match(name))}
    if not found:
        raise CheckpointError(f"{tensors.path}: the {tensors.what} has no transformer blocks")
    depth = max(found) + 1
    missing = sorted(set(range(depth)) - found)
    if missing:
        raise CheckpointError(
            f"{tensors.path}: blocks {missing} of {depth} are missing from the {tensors.what}; "
            "the file is incomplete"
        )
    return list(range(depth))
