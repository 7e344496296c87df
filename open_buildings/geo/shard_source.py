"""Where a footprint dataset's shards are: a folder, ``https://`` or ``gs://``, and its layout.

A dataset is a folder written by ``ob-infer`` (``{token}_buildings.csv.gz`` / ``.parquet`` next to
``manifest.json``) or laid out like the published Open Buildings v3 data
(``polygons_s2_level_4_gzip/`` with a header row, ``polygons_s2_level_6_gzip_no_header/``
without). Remote datasets are read through fsspec: plain HTTP(S) (byte ranges, so a GeoParquet
shard's row groups outside the region are never fetched) and ``gs://`` through gcsfs,
anonymously unless ``OPEN_BUILDINGS_GCS_TOKEN`` names credentials (gcsfs's ``token``: a JSON key
file, or ``google_default``). The layout comes from the folder's name, the manifest, a listing
(where the server gives one), and a CSV shard's first row; ``layout=`` overrides it.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import shapely

from open_buildings.geo import cells, footprints, grid

LAYOUTS = ("auto", "ob-infer", "v3", "v3-no-header")
#: The published layouts: the folder name, its S2 level and whether its CSVs have a header row.
V3_FOLDERS = {"v3": ("polygons_s2_level_4_gzip", 4, True)}
V3_FOLDERS["v3-no-header"] = ("polygons_s2_level_6_gzip_no_header", 6, False)
_V3_FOLDER = re.compile(r"^polygons_s2_level_(\d+)_gzip(_no_header)?$")
_SHARD_FILE = re.compile(r"^([0-9a-f]+)_buildings\.(csv\.gz|parquet)$")


@dataclass(frozen=True)
class Layout:
    """Where a dataset's shard files are and at which S2 level.

    Attributes:
        root: the dataset root as given.
        folder: the folder holding the shard files (``root`` or its v3 subfolder).
        level: the S2 level of the shard tokens.
        suffix: ``".parquet"`` or ``".csv.gz"``: the format read.
        header: the CSV shards start with a header row (False for the published
            ``polygons_s2_level_6_gzip_no_header/`` layout, read with the v3 column names).
    """

    root: str
    folder: str
    level: int
    suffix: str
    header: bool = True

    def shard(self, token: str) -> str:
        """Return the path or URL of one shard's file."""
        return join(self.folder, f"{token}_buildings{self.suffix}")


def join(base: str, name: str) -> str:
    """``base/name`` for a folder or a URL."""
    return f"{base.rstrip('/')}/{name}" if "://" in base else str(Path(base) / name)


def filesystem(url: str) -> Any:
    """The fsspec filesystem for a URL: HTTP(S), or gs:// (anonymous unless told otherwise)."""
    import fsspec

    protocol = url.split("://", 1)[0]
    if protocol in ("gs", "gcs"):
        return fsspec.filesystem("gs", token=os.environ.get("OPEN_BUILDINGS_GCS_TOKEN", "anon"))
    return fsspec.filesystem(protocol)


def open_binary(path: str) -> IO[bytes]:
    """Open a local file or a URL for reading (a URL lazily, by byte ranges where it can).

    A CSV shard is read front to back in 1 MiB blocks; a GeoParquet shard uncached, so that each
    of pyarrow's reads (the footer, then the column chunks of the row groups it wants) is one
    range request of its own size.
    """
    if "://" not in path:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    if path.endswith(".parquet"):
        return filesystem(path).open(path, "rb", cache_type="none")
    return filesystem(path).open(path, "rb", block_size=1 << 20)


def exists(path: str) -> bool:
    """Whether a file exists (a URL: a HEAD request, or the bucket's metadata)."""
    if "://" not in path:
        return Path(path).is_file()
    try:  # info, not exists: fsspec's HTTP exists() GETs the whole object
        filesystem(path).info(path)
    except FileNotFoundError:
        return False
    return True


def _list(folder: str) -> list[str]:
    """The names in a folder; [] where a server gives no listing (plain object storage)."""
    if "://" not in folder:
        path = Path(folder)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    try:
        entries = filesystem(folder).ls(folder.rstrip("/") + "/", detail=False)
    except (FileNotFoundError, OSError, ValueError):
        return []
    return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)


def detect_layout(root: str, layout: str = "auto") -> Layout:
    """Work out a dataset's layout: an ``ob-infer`` folder or a published v3 layout.

    Args:
        root: a local folder, an ``https://`` URL or a ``gs://`` URL.
        layout: ``"auto"``, or one of ``LAYOUTS`` to say which it is.

    Returns:
        The layout (for CSV shards, :func:`with_header_of` then checks the first row).

    Raises:
        FileNotFoundError: if ``root`` holds no layout that can be found.
        ValueError: for an unknown ``layout``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    name = root.rstrip("/").rsplit("/", 1)[-1]
    if layout in V3_FOLDERS:
        folder_name, level, header = V3_FOLDERS[layout]
        folder = root if _V3_FOLDER.match(name) else join(root, folder_name)
        match = _V3_FOLDER.match(folder.rstrip("/").rsplit("/", 1)[-1])
        return Layout(root, folder, int(match.group(1)) if match else level, ".csv.gz", header)
    match = _V3_FOLDER.match(name)
    if match and layout == "auto":
        return Layout(root, root, int(match.group(1)), ".csv.gz", header=not match.group(2))
    manifest = join(root, footprints.MANIFEST_NAME)
    names = _manifest_files(manifest) if exists(manifest) else _list(root)
    shards = [m for m in map(_SHARD_FILE.match, names) if m]
    if shards:
        suffix = ".parquet" if any(m.group(2) == "parquet" for m in shards) else ".csv.gz"
        levels = {cells.token_level(m.group(1)) for m in shards}
        if len(levels) != 1:
            raise FileNotFoundError(f"{root} mixes shards of S2 levels {sorted(levels)}")
        return Layout(root, root, levels.pop(), suffix)
    if layout == "auto":
        for entry in sorted(names, key=lambda n: "_no_header" in n):  # with a header first
            match = _V3_FOLDER.match(entry.rstrip("/"))
            if match:
                folder = join(root, entry.rstrip("/"))
                return Layout(root, folder, int(match.group(1)), ".csv.gz", not match.group(2))
    raise FileNotFoundError(
        f"{root} holds neither {{token}}_buildings.csv.gz/.parquet files with a manifest.json (as "
        "ob-infer writes) nor a polygons_s2_level_<L>_gzip/ or "
        "polygons_s2_level_<L>_gzip_no_header/ folder (as the published Open Buildings v3 "
        "data). Over HTTP give the shard folder's URL itself, or say which layout it is with "
        "--layout v3 or --layout v3-no-header"
    )


def _manifest_files(manifest: str) -> list[str]:
    import json

    with open_binary(manifest) as handle:
        files = json.loads(handle.read().decode("utf-8")).get("files", [])
    return [str(entry.get("name", "")).rsplit("/", 1)[-1] for entry in files]


def with_header_of(layout: Layout, shard: str) -> Layout:
    """The layout with ``header`` read from a CSV shard's first row (v3 column names or data).

    Args:
        layout: from :func:`detect_layout`.
        shard: one of its CSV shards.
    """
    if layout.suffix != ".csv.gz":
        return layout
    with open_binary(shard) as raw, gzip.GzipFile(fileobj=raw) as text:
        try:
            first = text.readline(4096).decode("utf-8", "replace")
        except (OSError, EOFError):
            return layout  # a damaged shard: reading it names the problem
    header = first.strip().split(",")[:2] == list(footprints.SCHEMA_COLUMNS[:2])
    return replace(layout, header=header)


def shards_for(region: shapely.Geometry, layout: Layout) -> list[str]:
    """Return the existing shard files whose S2 cell touches ``region``, in token order.

    Args:
        region: the region in lon/lat.
        layout: the dataset's layout.
    """
    if layout.level < 1:
        raise FileNotFoundError(f"{layout.root}: shards of S2 level 0 are not supported")
    spec = grid.GridSpec(level=layout.level, margin_m=0.0)
    tokens = sorted(tile.id for tile in grid.cover(region, spec))
    return [layout.shard(t) for t in tokens if exists(layout.shard(t))]
