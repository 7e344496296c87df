"""``ob-chips``' Beam job: labelled areas cut into chips and written as shards, with a manifest.

Tiles are planned on the driver (each area's grid tiles; validation tiles held out of every
other split of the same imagery), then each is read, cut (:mod:`open_buildings.training.chip_cut`)
and kept as a per-tile partial in ``OUT/.work`` (``--resume`` reuses them); a tile that fails
becomes a dead letter naming it. The partials are grouped into shards by a hash of the tile and
each shard is written sorted (:mod:`open_buildings.training.chip_shards`), so the same config
writes the same bytes however the runner splits the work; the manifest is written last.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from open_buildings import __version__
from open_buildings.config import dump_config
from open_buildings.errors import ConfigError, ImageryError
from open_buildings.geo import imagery
from open_buildings.geo.grid import GridSpec
from open_buildings.models import heads
from open_buildings.pipelines import faults, sinks
from open_buildings.pipelines.job import make_pipeline
from open_buildings.pipelines.probabilities import probability_path, read_probabilities
from open_buildings.remote import is_remote, local_copy, upload
from open_buildings.training import chip_shards
from open_buildings.training.chip_cut import cut_tile, shard_of
from open_buildings.training.config import AreaConfig, ChipsConfig
from open_buildings.training.scenes import area_tiles, read_labels, read_scene

WORK_DIR = ".work"
#: What the partials in ``OUT/.work`` were cut with (``--resume`` must cut with the same).
CUT_SETTINGS = "cut.json"
_CUT_KEYS = {"chip", "grid_level", "train", "val", "unlabelled", "tiles_per_shard"}
DEAD = "dead"
SUMMARY = "summary"


@dataclass(frozen=True)
class TileTask:
    """One tile to cut: its split, the area's index in that split's list, the tile's id."""

    split: str
    area: int
    tile_id: str


def split_areas(cfg: ChipsConfig) -> dict[str, list[AreaConfig]]:
    """The config's areas by split."""
    return {"train": list(cfg.train), "val": list(cfg.val), "unlabelled": list(cfg.unlabelled)}


def plan(cfg: ChipsConfig) -> tuple[list[TileTask], dict[str, list[str]]]:
    """Every tile to cut, and the validation tiles held out, by imagery (resolved path).

    Raises:
        ConfigError: an area's imagery cannot be opened, or it covers no tile.
    """
    spec = GridSpec(level=cfg.grid_level)
    held: dict[str, set[str]] = {}
    tasks: list[TileTask] = []
    areas_by_split = split_areas(cfg)
    for split in ("val", "train", "unlabelled"):  # validation first: the others skip its tiles
        for index, area in enumerate(areas_by_split[split]):
            source = imagery.open_imagery(area.imagery, bands=area.bands, scale=area.scale)
            key = os.path.realpath(area.imagery)
            out = set() if split == "val" else held.get(key, set())
            tiles = area_tiles(source, spec, only=area.tiles, held_out=out)
            if not tiles:
                raise ConfigError(f"{split} area {area.name!r}: no grid tile of its imagery")
            if split == "val":
                held.setdefault(key, set()).update(t.id for t in tiles)
            tasks.extend(TileTask(split, index, t.id) for t in tiles)
    return tasks, {k: sorted(v) for k, v in held.items()}


def shard_counts(cfg: ChipsConfig, tasks: list[TileTask]) -> dict[str, int]:
    """Shards per split: one per ``tiles_per_shard`` tiles."""
    splits = {t.split for t in tasks}
    return {s: math.ceil(sum(t.split == s for t in tasks) / cfg.tiles_per_shard) for s in splits}


def partial_url(work: str, task: TileTask, area: str) -> str:
    """Where a cut tile's chips are kept until the shards are written (and for ``--resume``)."""
    return f"{work.rstrip('/')}/tiles/{task.split}/{area}/{task.tile_id}.parquet"


def _exists(url: str) -> bool:
    if not is_remote(url):
        return os.path.exists(url)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(url)


class CutTileFn(beam.DoFn):
    """TileTask -> ``((split, shard), partial url)``; a summary per tile; failures dead-lettered."""

    def __init__(self, cfg: ChipsConfig, work: str, held: dict[str, list[str]], resume: bool):
        self._cfg = cfg
        self._work = work
        self._held = held
        self._resume = resume
        self._sources: dict[tuple[str, int], Any] = {}
        self._labels: dict[tuple[str, int], Any] = {}

    def _area(self, task: TileTask) -> AreaConfig:
        return split_areas(self._cfg)[task.split][task.area]

    def process(self, task: Any, shards: Any) -> Iterator[Any]:
        """Cut one tile (or find it cut by an earlier attempt) and route it to its shard."""
        area = self._area(task)
        url = partial_url(self._work, task, area.name)
        key = (task.split, shard_of(task.split, area.name, task.tile_id, shards[task.split]))
        if self._resume and _exists(url):
            meta = pq.read_schema(local_copy(url)).metadata or {}
            chips, buildings = int(meta[b"chips"]), int(meta[b"buildings"])
        else:
            try:
                chips, buildings = self._cut(task, area, url)
            except (ImageryError, ConfigError, OSError, ValueError) as exc:
                record = sinks.DeadLetter(task.tile_id, f"cut {task.split}/{area.name}", str(exc))
                yield beam.pvalue.TaggedOutput(DEAD, record)
                return
        summary = {"split": task.split, "area": area.name, "tile_id": task.tile_id}
        yield beam.pvalue.TaggedOutput(SUMMARY, {**summary, "chips": chips, "buildings": buildings})
        if chips:
            yield key, url

    def _cut(self, task: TileTask, area: AreaConfig, url: str) -> tuple[int, int]:
        cfg, ident = self._cfg, (task.split, task.area)
        if ident not in self._sources:
            self._sources[ident] = imagery.open_imagery(
                area.imagery, bands=area.bands, scale=area.scale
            )
            labelled = task.split != "unlabelled"
            self._labels[ident] = read_labels(area.labels) if labelled else None
            if labelled and not area.labels:
                raise ConfigError(f"{task.split} area {area.name!r} has no 'labels'")
        from open_buildings.geo.grid import tile_from_id

        spec = GridSpec(level=cfg.grid_level)
        held = () if task.split == "val" else self._held.get(os.path.realpath(area.imagery), ())
        scene = read_scene(
            area.name,
            self._sources[ident],
            self._labels[ident],
            tile_from_id(task.tile_id, spec),
            min_valid_px=int(cfg.chip.size**2 * cfg.chip.min_valid),
            held=held,
        )
        rows: list[dict[str, Any]] = []
        buildings = 0
        if scene is not None:
            teacher = None
            if task.split == "unlabelled":
                path = probability_path(area.probabilities, task.tile_id)
                teacher, has = read_probabilities(path, scene.grid)
                scene.valid = scene.valid & has
            cut = cut_tile(
                scene,
                task.split,
                size=cfg.chip.size,
                stride=cfg.chip.stride,
                min_valid=cfg.chip.min_valid,
                context=cfg.chip.context,
                teacher=teacher,
            )
            rows, buildings = cut.rows, cut.buildings
        table = pa.Table.from_pylist(rows, schema=chip_shards.SCHEMA).replace_schema_metadata(
            {"chips": str(len(rows)), "buildings": str(buildings)}
        )
        sinks.put(url, lambda handle: pq.write_table(table, handle, compression="zstd"))
        faults.point("partial")
        return len(rows), buildings


class WriteShardFn(beam.DoFn):
    """``((split, index), partial urls)`` -> the shard written, as a :class:`ShardInfo`."""

    def __init__(self, out: str) -> None:
        self._out = out

    def process(self, element: Any, shards: Any) -> Iterator[Any]:
        """Write one shard from its tiles' partials (sorted, so retries write the same bytes)."""
        (split, index), urls = element
        rows = [r for url in sorted(urls) for r in pq.read_table(local_copy(url)).to_pylist()]
        name = chip_shards.shard_name(split, index, shards[split])
        remote = is_remote(self._out)
        with (
            tempfile.TemporaryDirectory(prefix="ob-shard-")
            if remote
            else nullcontext(self._out) as folder
        ):
            info = chip_shards.write_shard(rows, Path(folder) / name, split)
            if remote:
                upload(Path(folder) / name, f"{self._out.rstrip('/')}/{name}")
        faults.point("shard")
        yield info


def manifest(
    cfg: ChipsConfig,
    held: dict[str, list[str]],
    shards: list[chip_shards.ShardInfo],
    tiles: list[dict[str, Any]],
    dead: list[sinks.DeadLetter],
) -> dict[str, Any]:
    """The manifest: the config, the chips' shapes, splits (tiles, chips, buildings), shards."""
    splits: dict[str, dict[str, int]] = {}
    for tile in tiles:
        entry = splits.setdefault(tile["split"], {"tiles": 0, "chips": 0, "buildings": 0})
        entry["tiles"] += 1
        entry["chips"] += tile["chips"]
        entry["buildings"] += tile["buildings"]
    for shard in shards:
        entry = splits.setdefault(shard.split, {"tiles": 0, "chips": 0, "buildings": 0})
        entry["shards"] = entry.get("shards", 0) + 1
        entry["chips_with_buildings"] = entry.get("chips_with_buildings", 0) + shard.with_buildings
    return {
        "format": chip_shards.FORMAT,
        "code_version": __version__,
        "config": dump_config(cfg),
        "grid_level": cfg.grid_level,
        "chip": cfg.chip.model_dump(),
        "bands": 3,
        "channels": len(heads.CHANNELS),
        "held_out": held,
        "splits": splits,
        "tiles": sorted(tiles, key=lambda t: (t["split"], t["area"], t["tile_id"])),
        "shards": chip_shards.shard_records(shards),
        "dead_letters": [
            {"tile_id": d.tile_id, "stage": d.stage, "reason": d.reason}
            for d in sorted(dead, key=lambda d: (d.tile_id, d.stage))
        ],
    }


def run(cfg: ChipsConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run the job; return the manifest it wrote.

    Raises:
        ConfigError: an area is unusable (see :func:`plan`).
    """
    tasks, held = plan(cfg)
    counts = shard_counts(cfg, tasks)
    out = str(cfg.out)
    work = f"{out.rstrip('/')}/{WORK_DIR}"
    if not is_remote(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    record_cut_settings(cfg, work, resume)
    with make_pipeline(cfg) as p:
        shards_side = beam.pvalue.AsSingleton(p | "Counts" >> beam.Create([counts]))
        cut = (
            p
            | "Tiles" >> beam.Create(tasks)
            | "Spread" >> beam.Reshuffle()
            | "Cut"
            >> beam.ParDo(CutTileFn(cfg, work, held, resume), shards_side).with_outputs(
                DEAD, SUMMARY, main="chips"
            )
        )
        written = (
            cut.chips
            | "ByShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(WriteShardFn(out), shards_side)
        )
        _ = (
            p
            | "Once" >> beam.Create([None])
            | "Manifest"
            >> beam.Map(
                lambda _, shards, tiles, dead: _write_manifest(
                    out, manifest(cfg, held, shards, tiles, dead)
                ),
                beam.pvalue.AsList(written),
                beam.pvalue.AsList(cut[SUMMARY]),
                beam.pvalue.AsList(cut[DEAD]),
            )
        )
    return json.loads(
        Path(local_copy(f"{out.rstrip('/')}/{chip_shards.MANIFEST_NAME}")).read_text()
    )


def record_cut_settings(cfg: ChipsConfig, work: str, resume: bool) -> None:
    """Record what this run cuts with in ``work``; refuse to resume onto partials cut otherwise.

    Raises:
        ConfigError: naming the settings that differ from those the kept partials were cut with.
    """
    url = f"{work.rstrip('/')}/{CUT_SETTINGS}"
    now = cfg.model_dump(mode="json", include=_CUT_KEYS)
    if resume and _exists(url):
        before = json.loads(Path(local_copy(url)).read_text())
        changed = sorted(key for key in now if before.get(key) != now[key])
        if changed:
            raise ConfigError(
                f"the tiles kept in {work} were cut with other {', '.join(changed)} than this "
                "config's; resume with the config they were cut with, or delete that folder "
                "to cut every tile again"
            )
    sinks.put(url, lambda handle: handle.write(json.dumps(now, sort_keys=True).encode()))


def _write_manifest(out: str, content: dict[str, Any]) -> None:
    faults.point("manifest")
    text = json.dumps(content, indent=1, sort_keys=True).encode()
    sinks.put(f"{out.rstrip('/')}/{chip_shards.MANIFEST_NAME}", lambda handle: handle.write(text))
