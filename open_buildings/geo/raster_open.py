"""Opening a user's raster safely: allowed paths and drivers, declared-size caps, georeference.

Everything a user supplies is treated as hostile. :func:`gdal_path` accepts a local path or a
``gs://``, ``s3://`` or ``https://`` URL (mapped to GDAL's ``/vsigs/``, ``/vsis3/`` and
``/vsicurl/``) and nothing else GDAL would follow; :func:`open_raster` opens it with an allowed
driver only (so a VRT named ``.tif`` is refused) and checks what the file *declares* against
:class:`ReadLimits` before any pixel is read.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from open_buildings.errors import ImageryError

try:  # GDAL errors surface as CPLE_* exceptions; they are not all RasterioError subclasses.
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - rasterio moved it
    CPLE_BaseError = RasterioError  # type: ignore[misc,assignment]

#: Errors from rasterio/GDAL that are turned into an ImageryError naming the file.
GDAL_ERRORS: tuple[type[BaseException], ...] = (RasterioError, CPLE_BaseError)
#: The only raster drivers a user file may be opened with (so a VRT named .tif is not followed).
ALLOWED_DRIVERS = ("GTiff", "JPEG", "PNG", "WEBP")
#: Drivers that decode the whole image to read any window of it.
WHOLE_IMAGE_DRIVERS = ("JPEG", "PNG", "WEBP")
_REMOTE = {"gs": "/vsigs/", "s3": "/vsis3/", "https": "/vsicurl/"}
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-_]*):")
REMOTE_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_MAX_RETRY": "3",
}
#: Set for every read: libjpeg's "Corrupt JPEG data" becomes an error instead of a log line.
READ_ENV = {"GDAL_ERROR_ON_LIBJPEG_WARNING": "TRUE"}
#: The first bytes of the formats in ALLOWED_DRIVERS, to tell a damaged file from a foreign one.
_MAGIC = {
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
}


@dataclass(frozen=True)
class ReadLimits:
    """Caps checked against what a file *declares*, before any pixel is read.

    Attributes:
        max_total_bytes: width x height x bands x bytes per sample of one file (default 1 TiB).
        max_block_bytes: bytes of one block or strip, which GDAL decodes whole for any window that
            touches it; for JPEG/PNG/WEBP files, the whole image (default 512 MiB).
        max_bands: the most bands a file may have (default 16).
    """

    max_total_bytes: int = 2**40
    max_block_bytes: int = 512 * 2**20
    max_bands: int = 16


def gdal_path(spec: str | os.PathLike[str]) -> str:
    """Check a user-supplied path and return the path GDAL should open.

    Local paths are returned as they are. ``gs://``, ``s3://`` and ``https://`` URLs map to
    ``/vsigs/``, ``/vsis3/`` and ``/vsicurl/``. Anything else that GDAL would interpret specially
    (``/vsi...`` paths, other URL schemes, ``DRIVER:...`` prefixes, inline XML, ``?`` options) is
    refused.

    Args:
        spec: a local path or a ``gs://``, ``s3://`` or ``https://`` URL.

    Returns:
        The path to hand to GDAL.

    Raises:
        ImageryError: if the path is not allowed.
    """
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise ImageryError(f"imagery path {spec!r} is empty; pass a file, folder or URL")
    if any(ord(ch) < 32 for ch in text) or text.lstrip().startswith("<"):
        raise ImageryError(
            f"imagery path {text!r} contains control characters or inline XML; "
            "pass a plain file path or a gs://, s3:// or https:// URL"
        )
    if "/vsi" in text.lower():
        raise ImageryError(
            f"imagery path {text!r} is a GDAL virtual path (/vsi...), which is not "
            "allowed; pass a local path or a gs://, s3:// or https:// URL instead"
        )
    match = SCHEME.match(text)
    if match and not re.match(r"^[A-Za-z]:[\\/]", text):
        scheme = match.group(1).lower()
        rest = text[match.end() :]
        if scheme not in _REMOTE or not rest.startswith("//"):
            hint = " (use https://)" if scheme == "http" else ""
            raise ImageryError(
                f"imagery path {text!r} uses {scheme + ':'!r}, which is not allowed"
                f"{hint}; only local paths and gs://, s3:// and https:// URLs are"
            )
        host_key = rest[2:]
        if "/" not in host_key or host_key.startswith("/") or host_key.endswith("/"):
            raise ImageryError(
                f"imagery URL {text!r} names no object; expected "
                f"{scheme}://bucket-or-host/path/to/file"
            )
        if scheme != "https" and ("?" in host_key or "#" in host_key):
            raise ImageryError(f"imagery URL {text!r} contains '?' or '#'; remove them")
        return _REMOTE[scheme] + (text if scheme == "https" else host_key)
    if "?" in text or "#" in text:
        raise ImageryError(
            f"imagery path {text!r} contains '?' or '#', which GDAL may read as "
            "options; rename the file"
        )
    return text


def on_network(path: str) -> bool:
    """Return True for a path :func:`gdal_path` mapped to a network location."""
    return path.startswith(tuple(_REMOTE.values()))


class _GdalWarnings(logging.Handler):
    """Collects the GDAL warnings rasterio logs (``rasterio._err``) in one thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextmanager
def _gdal_warnings() -> Iterator[_GdalWarnings]:
    logger = logging.getLogger("rasterio._err")
    handler = _GdalWarnings()
    level = logger.level
    if not logger.isEnabledFor(logging.WARNING):  # a quieted logger would hide them from us
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def gdal_message(exc: BaseException) -> str:
    """Return what GDAL said, following rasterio's "See previous exception" to its cause."""
    parts = [str(exc).rstrip(".")]
    cause = exc.__cause__ or exc.__context__
    while cause is not None and "previous exception" in parts[-1] and len(parts) < 4:
        parts[-1] = parts[-1].replace(" See previous exception for details", "").rstrip(".")
        parts.append(str(cause).rstrip("."))
        cause = cause.__cause__ or cause.__context__
    return ": ".join(p for p in parts if p)


def sniff_format(path: str) -> str | None:
    """Return ``"TIFF"``, ``"JPEG"`` or ``"PNG"`` from a local file's first bytes, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    return next((kind for kind, magics in _MAGIC.items() if head.startswith(magics)), None)


def check_png(name: str, path: str) -> None:
    """Check a local PNG's structure with Pillow, which sees what GDAL's PNG driver does not.

    GDAL decodes a truncated PNG (or one whose compressed data is damaged) without an error or a
    warning and returns garbage pixels. Pillow's ``verify`` walks every chunk and checks its
    CRC-32 and the closing IEND chunk, without decompressing: a truncated file, or damaged bytes
    anywhere in it, fail (a corruption that keeps every CRC intact would need to be made on
    purpose).

    Raises:
        ImageryError: naming the file and what Pillow found.
    """
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's ways of saying "damaged"
        raise ImageryError(
            f"imagery file {name} is a damaged PNG ({exc}); the pixels cannot be trusted. "
            "Download or export the file again"
        ) from exc


@contextmanager
def open_raster(name: str, path: str, limits: ReadLimits) -> Iterator[rasterio.DatasetReader]:
    """Open a raster with an allowed driver and check its declared size against ``limits``.

    Reads made inside the block are strict: libjpeg warnings are errors, a local PNG's chunks are
    checked by Pillow first (:func:`check_png`), and any warning GDAL logs while the file is open
    fails the block with an :class:`ImageryError` when it ends, so pixels GDAL complained about
    are never used.

    Args:
        name: the path as the user gave it, for messages.
        path: the GDAL path from :func:`gdal_path`.
        limits: the caps to check.

    Yields:
        The open dataset; it is closed on exit.

    Raises:
        ImageryError: if the file is missing, damaged, not an allowed format, over a cap, or
            GDAL warned while it was read.
    """
    if not on_network(path) and not os.path.isfile(path):
        raise ImageryError(f"imagery file {name} does not exist or is not a file")
    env = {**READ_ENV, **(REMOTE_ENV if on_network(path) else {})}
    ds = None
    errors = []
    with rasterio.Env(**env), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for driver in ALLOWED_DRIVERS:
            try:
                ds = rasterio.open(path, driver=driver)
                break
            except GDAL_ERRORS as exc:
                errors.append(str(exc))
            except IndexError as exc:  # rasterio's answer for a dataset with no bands
                errors.append(str(exc))
        if ds is None:
            raise _not_opened(name, path, errors)
        try:
            check_limits(name, ds, limits)
            if ds.driver == "PNG" and not on_network(path):
                check_png(name, path)
            with _gdal_warnings() as warned:
                yield ds
            if warned.messages:
                raise ImageryError(
                    f"imagery file {name}: GDAL warned while reading it "
                    f"({'; '.join(dict.fromkeys(warned.messages))[:300]}), so its pixels "
                    "cannot be trusted; check it with gdalinfo -checksum and replace it"
                )
        finally:
            ds.close()


def _not_opened(name: str, path: str, errors: list[str]) -> ImageryError:
    """The error for a file no allowed driver opened: damaged if it looks like one, else foreign."""
    kind = None if on_network(path) else sniff_format(path)
    detail = next((e for e in errors if "not recognized" not in e), errors[0] if errors else "")
    if kind is not None:
        return ImageryError(
            f"imagery file {name} looks like a {kind} file but GDAL cannot open it "
            f"({detail.rstrip('.')}); it is probably truncated or damaged. Download or "
            "export it again, and check it with gdalinfo"
        )
    suffix = f" (GDAL said: {detail})" if on_network(path) and detail else ""
    return ImageryError(
        f"imagery file {name} is not in an allowed raster format "
        f"({', '.join(ALLOWED_DRIVERS)}); VRT, HDF5, NetCDF and other formats are refused. "
        f"Convert it to a Cloud-Optimized GeoTIFF (gdal_translate -of COG){suffix}"
    )


def check_limits(name: str, ds: rasterio.DatasetReader, limits: ReadLimits) -> None:
    """Check a dataset's declared bands, total size and block size against ``limits``.

    Args:
        name: the file name, for messages.
        ds: the open dataset (only its header is used).
        limits: the caps.

    Raises:
        ImageryError: if a cap is exceeded or the file has no bands.
    """
    if ds.count == 0:
        raise ImageryError(
            f"imagery file {name} has no raster bands (only subdatasets?); "
            "convert the band you need to a GeoTIFF"
        )
    if ds.count > limits.max_bands:
        raise ImageryError(
            f"imagery file {name} declares {ds.count} bands, over the cap of "
            f"{limits.max_bands}; extract the RGB bands or raise max_bands"
        )
    itemsize = max(np.dtype(dt).itemsize for dt in ds.dtypes)
    total = ds.width * ds.height * ds.count * itemsize
    if total > limits.max_total_bytes:
        raise ImageryError(
            f"imagery file {name} declares {ds.width} x {ds.height} x {ds.count} "
            f"bands = {total / 2**30:.1f} GiB, over the cap of "
            f"{limits.max_total_bytes / 2**30:.1f} GiB; split it or raise "
            "max_total_bytes"
        )
    if ds.driver in WHOLE_IMAGE_DRIVERS:
        block, what = total, f"a {ds.driver} image, decoded whole,"
    else:
        rows, cols = ds.block_shapes[0]
        per_block = ds.count if ds.interleaving in (None, rasterio.enums.Interleaving.pixel) else 1
        block, what = rows * cols * itemsize * per_block, f"one block/strip ({cols} x {rows})"
    if block > limits.max_block_bytes:
        raise ImageryError(
            f"imagery file {name}: {what} is {block / 2**20:.0f} MiB, over the cap "
            f"of {limits.max_block_bytes / 2**20:.0f} MiB; re-tile it "
            "(gdal_translate -of COG) or raise max_block_bytes"
        )


def check_georeference(name: str, ds: rasterio.DatasetReader) -> None:
    """Refuse a dataset without a CRS and an affine geotransform.

    Args:
        name: the file name, for messages.
        ds: the open dataset.

    Raises:
        ImageryError: if the file is not georeferenced by a CRS and a geotransform.
    """
    if ds.crs is None or ds.transform == Affine.identity():
        if ds.gcps[0] or ds.rpcs:
            raise ImageryError(
                f"imagery file {name} is georeferenced only by GCPs or RPCs; "
                "warp it first (gdalwarp -t_srs EPSG:... in.tif out.tif)"
            )
        raise ImageryError(
            f"imagery file {name} has no georeference (no CRS or geotransform). If it is a "
            "slippy-map tile, open its folder as an XYZ source (files named z/x/y.ext or "
            "OAM-x-y-z.ext); otherwise add a .aux.xml/.wld sidecar or georeference it"
        )
