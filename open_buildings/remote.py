"""Paths that may be URLs (``gs://``, ``s3://``, ``https://``): the one test and the one copier.

Every layer that accepts "a local path or a URL" for a whole file (a region, a job config, a
checkpoint, an output folder) uses these. Beam's ``FileSystems`` does the transfer, so any scheme
Beam has a filesystem for works; it is imported only when a URL is actually met. (Imagery is not
copied: GDAL streams it through ``/vsigs/`` and friends, see ``geo.imagery_raster.gdal_path``.)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_BLOCK = 1 << 22
#: Beam's FileSystems (de)compress by the name's suffix unless told not to: a ``.csv.gz`` would be
#: gzipped a second time on upload and unpacked on download. Bytes travel as they are.
_RAW = "uncompressed"


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Return True for a URL (``scheme://...``) rather than a path on this machine."""
    return "://" in str(path)


def local_copy(path: str, *, prefix: str = "ob-remote-") -> str:
    """Return a local path holding ``path``'s bytes: ``path`` itself when it is local.

    Args:
        path: a local path or a URL Beam's ``FileSystems`` can read.
        prefix: the name prefix of the temporary folder a URL is copied into.

    Returns:
        A local file path (in a fresh temporary folder for a URL; the caller owns it).
    """
    if not is_remote(path):
        return path
    from apache_beam.io.filesystems import FileSystems

    local = os.path.join(tempfile.mkdtemp(prefix=prefix), path.rstrip("/").rsplit("/", 1)[-1])
    with FileSystems.open(path, compression_type=_RAW) as source, open(local, "wb") as target:
        shutil.copyfileobj(source, target, _BLOCK)
    return local


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the bytes of a small file, local or at a URL, as they are stored."""
    if not is_remote(path):
        return Path(path).read_bytes()
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(str(path), compression_type=_RAW) as source:
        return source.read()


def read_remote_text(url: str) -> str | None:
    """Return the text of a small file at ``url``, or None when it does not exist."""
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(url):
        return None
    return read_bytes(url).decode("utf-8")


def upload(local: str | os.PathLike[str], url: str) -> None:
    """Copy a local file to a URL through Beam's ``FileSystems`` (e.g. ``gs://``).

    The object appears whole when its upload completes, so a reader never sees a torn file.
    """
    from apache_beam.io.filesystems import FileSystems

    with (
        open(Path(local), "rb") as source,
        FileSystems.create(url, compression_type=_RAW) as target,
    ):
        shutil.copyfileobj(source, target, _BLOCK)
