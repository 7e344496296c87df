"""The chip shard format ``ob-chips`` writes and ``ob-train`` streams: Parquet, one chip a row.

Parquet rather than WebDataset tar shards: pyarrow is already here (no new dependency), each
chip's scalars (tile, area, split, buildings, building pixels, draw weights) are columns that
can be read alone (the stream reads only ``building_px`` and the weights to plan an epoch, never
the pixels), row groups let a reader start in the middle of a shard (resume), zstd compresses
the masks to almost nothing, and DuckDB or pandas can query a shard as a table. Pixels are raw
little-endian bytes in binary columns, their shapes in the manifest: ``image`` uint8 ``(bands,
S, S)``, ``usable`` uint8 ``(S, S)``, ``cover`` uint16 ``(S, S)`` (how many of its tile's chips
hold each pixel; ``building_weight`` and ``usable_weight`` are the chip's building and usable
pixels, each counted ``1 / cover``), ``target`` uint8 ``(channels, S, S)``, ``weight`` float16
``(S, S)``, ``teacher`` float16 ``(channels, S, S)`` (teacher-labelled chips).

The manifest (``manifest.json``, written last) lists every shard with its split, chips,
chips with buildings and sha256; a shard whose bytes differ is refused when read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from open_buildings.errors import ShardError
from open_buildings.geo.footprints import atomic_write
from open_buildings.models.checkpoint_meta import file_sha256

MANIFEST_NAME = "manifest.json"
FORMAT = "open-buildings-chips/2"
#: Chips per Parquet row group: the smallest piece a reader decodes.
ROW_GROUP = 16

SCHEMA = pa.schema(
    [
        ("chip_id", pa.string()),
        ("order", pa.string()),
        ("area", pa.string()),
        ("tile_id", pa.string()),
        ("split", pa.string()),
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("buildings", pa.int32()),
        ("building_px", pa.int32()),
        ("building_weight", pa.float32()),
        ("usable_weight", pa.float32()),
        ("image", pa.binary()),
        ("usable", pa.binary()),
        ("cover", pa.binary()),
        ("target", pa.binary()),
        ("weight", pa.binary()),
        ("teacher", pa.binary()),
    ]
)


@dataclass(frozen=True)
class ShardInfo:
    """One shard file as the manifest lists it."""

    name: str
    split: str
    chips: int
    #: chips holding at least one labelled building
    with_buildings: int
    sha256: str
    bytes: int


@dataclass
class ChipSet:
    """An ``ob-chips`` output folder, read from its manifest.

    Attributes:
        root: the folder.
        size: chip side in pixels.
        bands: image bands.
        channels: target (and teacher) channels.
        shards: every shard, in name order.
        held_out: validation tiles by imagery (resolved path), never in another split.
        manifest: the whole manifest.
    """

    root: Path
    size: int
    bands: int
    channels: int
    shards: list[ShardInfo]
    held_out: dict[str, list[str]]
    manifest: dict[str, Any] = field(repr=False)

    def split(self, name: str) -> list[ShardInfo]:
        """The shards of one split, in name order."""
        return [s for s in self.shards if s.split == name and s.chips]


def shard_name(split: str, index: int, count: int) -> str:
    """``train-00003-of-00016.parquet``."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def write_shard(rows: list[dict[str, Any]], path: str | os.PathLike[str], split: str) -> ShardInfo:
    """Write one shard's chips, sorted by their ``order`` key, atomically; safe to repeat
    (the same rows give the same bytes)."""
    rows = sorted(rows, key=lambda r: r["order"])
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    target = Path(path)
    with atomic_write(target, overwrite=True) as handle:
        pq.write_table(table, handle, row_group_size=ROW_GROUP, compression="zstd")
    return ShardInfo(
        target.name,
        split,
        len(rows),
        sum(1 for r in rows if r["buildings"]),
        file_sha256(target),
        target.stat().st_size,
    )


def shard_records(shards: list[ShardInfo]) -> list[dict[str, Any]]:
    """The manifest's ``shards`` list."""
    return [asdict(s) for s in sorted(shards, key=lambda s: s.name)]


def open_chipset(root: str | os.PathLike[str]) -> ChipSet:
    """Read an ``ob-chips`` folder's manifest and check that every shard it lists is there.

    Raises:
        ShardError: no manifest (the run did not finish), another format, or a shard missing
            or of another size than the manifest says.
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(
            f"{root} has no {MANIFEST_NAME}: it is not a finished ob-chips output; run (or "
            "--resume) ob-chips into it first"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ShardError(
            f"{path} is not an ob-chips manifest of this version ({FORMAT}, it says "
            f"{manifest.get('format')!r}); cut the chips again with this ob-chips (--resume "
            "into the same folder rewrites it)"
        )
    shards = [ShardInfo(**s) for s in manifest["shards"]]
    for shard in shards:
        file = root / shard.name
        if not file.is_file() or file.stat().st_size != shard.bytes:
            raise ShardError(
                f"shard {file} is missing or not the {shard.bytes} bytes the manifest lists; "
                "re-run ob-chips --resume into that folder"
            )
    return ChipSet(
        root,
        int(manifest["chip"]["size"]),
        int(manifest["bands"]),
        int(manifest["channels"]),
        shards,
        {k: list(v) for k, v in manifest["held_out"].items()},
        manifest,
    )


class ShardReader:
    """Reads rows of one chip set's shards, checking each file's sha256 once per process."""

    def __init__(self, chipset: ChipSet) -> None:
        self.chipset = chipset
        self._files: dict[str, pq.ParquetFile] = {}

    def _open(self, shard: ShardInfo) -> pq.ParquetFile:
        if shard.name not in self._files:
            path = self.chipset.root / shard.name
            if file_sha256(path) != shard.sha256:
                raise ShardError(
                    f"shard {path} does not match the sha256 in its manifest: it is damaged or "
                    "was changed; re-run ob-chips into a new folder"
                )
            self._files[shard.name] = pq.ParquetFile(path)
        return self._files[shard.name]

    def column(self, shard: ShardInfo, name: str) -> np.ndarray:
        """One scalar column of a shard, in row order."""
        return self._open(shard).read(columns=[name]).column(name).to_numpy()

    def rows(
        self, shard: ShardInfo, indices: np.ndarray, columns: list[str]
    ) -> list[dict[str, Any]]:
        """The rows at sorted ``indices`` of a shard, reading one row group at a time (so a
        reader holds one group's pixels, whatever the shard's size)."""
        file = self._open(shard)
        out: list[dict[str, Any]] = []
        groups = indices // ROW_GROUP
        for group in np.unique(groups):
            local = indices[groups == group] - group * ROW_GROUP
            table = file.read_row_group(int(group), columns=columns)
            out.extend(table.take(pa.array(local, type=pa.int64())).to_pylist())
        return out


def decode(row: dict[str, Any], chipset: ChipSet) -> dict[str, np.ndarray]:
    """A row's pixel columns as arrays of their shapes (absent columns left out)."""
    s, out = chipset.size, {}
    out["image"] = np.frombuffer(row["image"], np.uint8).reshape(chipset.bands, s, s)
    out["usable"] = np.frombuffer(row["usable"], np.uint8).reshape(s, s).astype(bool)
    if row.get("cover") is not None:
        out["cover"] = np.frombuffer(row["cover"], np.uint16).reshape(s, s)
    if row.get("target") is not None:
        out["target"] = np.frombuffer(row["target"], np.uint8).reshape(chipset.channels, s, s)
        out["weight"] = np.frombuffer(row["weight"], np.float16).reshape(s, s)
    if row.get("teacher") is not None:
        out["teacher"] = np.frombuffer(row["teacher"], np.float16).reshape(chipset.channels, s, s)
    return out
