"""The inference pipeline's Beam transforms: labelled composites over plain stage functions.

``build_inference`` wires them::

    CoverTiles -> ReadImagery -> RunInference -> Polygonize -> WriteShards -> WriteManifest
                     |  dead letters  ---------------^-----------------------------^

Each DoFn is a thin adapter over a plain function: tiles from ``geo.grid``, pixels from
``geo.imagery``, the model from :mod:`.runtime`, footprints from :mod:`.postprocess`, files from
:mod:`.sinks`. Each stage receives the sub-config it uses (``config.grid``,
``config.postprocess``, ``config.runtime``) whole. ``ob-detect`` reuses :class:`CoverTiles` and
:class:`ReadImagery`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import shapely
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from open_buildings.errors import ImageryError
from open_buildings.geo import grid
from open_buildings.geo.region_mask import near_region
from open_buildings.pipelines import device_decode, domain, postprocess, sinks
from open_buildings.pipelines.config import InferConfig, PostprocessConfig, RuntimeConfig
from open_buildings.pipelines.model_handler import CheckpointModelHandler
from open_buildings.pipelines.outputs import WriteManifest, WriteShards
from open_buildings.pipelines.probabilities import write_probabilities
from open_buildings.pipelines.region_input import RegionInput, parsed
from open_buildings.pipelines.runtime import ModelRef, TileInput
from open_buildings.remote import is_remote

NAMESPACE = "open_buildings"
DEAD_LETTER = "dead_letter"
FINISHED = "finished"
#: Tagged output of ``(tile id, reasons)`` for tiles unlike the model's training imagery.
UNFAMILIAR = "unfamiliar"
COUNTERS = (
    "tiles_read",
    "tiles_empty",
    "tiles_failed",
    "tiles_resumed",
    "buildings",
    "outside_region",
    "tiles_unfamiliar",
    "m2_covered",
)


def _counter(name: str) -> Any:
    return Metrics.counter(NAMESPACE, name)


@dataclass(frozen=True)
class WorkDir:
    """Where a local run keeps per-tile results (progress, ``--resume``) and failure markers.

    Attributes:
        path: the folder.
        resume: reuse the per-tile results already there.
    """

    path: str
    resume: bool = False


class CoverTiles(beam.PTransform):
    """Region (one WKB element, :class:`.region_input.RegionInput`) -> tile ids, spread out.

    The region is cut into coarse S2 chunks on one worker; the chunks are reshuffled, each is
    expanded into its tiles on whichever worker gets it (the region reaches it as a side input,
    not in the job graph), and the tiles are reshuffled again so the expensive stages after this
    one share them evenly.

    Args:
        spec: the tiling grid.
    """

    def __init__(self, spec: grid.GridSpec) -> None:
        super().__init__()
        self._spec = spec

    def expand(self, region: beam.PCollection) -> beam.PCollection:
        """Build the stages."""
        spec = self._spec
        return (
            region
            | "Chunks" >> beam.FlatMap(_chunks, spec.level)
            | "SpreadChunks" >> beam.Reshuffle()
            | "TilesOfChunk" >> beam.FlatMap(_tiles_of_chunk, beam.pvalue.AsSingleton(region), spec)
            | "SpreadTiles" >> beam.Reshuffle()
        )


def _chunks(wkb: bytes, tile_level: int) -> Iterator[str]:
    return grid.tile_chunks(parsed(wkb), tile_level)


def _tiles_of_chunk(chunk: str, wkb: bytes, spec: grid.GridSpec) -> Iterator[str]:
    return grid.tiles_in_chunk(parsed(wkb), chunk, spec)


class ReadTileFn(beam.DoFn):
    """Tile id -> ``(tile id, TileInput)``; failures to the dead-letter output, empties skipped.

    With a resuming work folder, a tile whose per-tile result exists is not read: its footprints
    go to the ``finished`` output instead.

    Args:
        imagery: the imagery source spec for ``geo.imagery.open_imagery``.
        spec: the tiling grid.
        work: the per-tile work folder; None keeps none.
        empty: makes the result kept for a tile without imagery (no rows).
        bands: the 1-based (r, g, b) bands; None maps them from colour interpretation.
        resumed: a kept tile's partial -> what goes to the ``finished`` output (by default its
            rows, read back).

    With the side input ``region`` (WKB; given when the output is clipped to the region),
    pixels farther than the tile margin from the region count as having no imagery
    (``geo.region_mask.near_region``): no building written can reach them.
    """

    def __init__(
        self,
        imagery: str,
        spec: grid.GridSpec,
        work: WorkDir | None,
        empty: Callable[[], Any] = postprocess.empty_footprints,
        bands: tuple[int, int, int] | None = None,
        resumed: Callable[[Path], Iterable[Any]] = sinks.read_back,
    ) -> None:
        self._imagery = imagery
        self._spec = spec
        self._work = work
        self._empty = empty
        self._bands = bands
        self._resumed = resumed
        self._source: Any = None

    def setup(self) -> None:
        """Open the imagery source once per worker."""
        from open_buildings.geo.imagery import open_imagery

        self._source = open_imagery(self._imagery, bands=self._bands)

    def process(self, tile_id: str, region: bytes | None = None) -> Iterator[Any]:
        """Read one tile (only its part near ``region``, when given)."""
        work = self._work
        if work and work.resume:
            partial = sinks.partial_path(work.path, tile_id)
            if partial.exists():
                _counter("tiles_resumed").inc()
                for kept in self._resumed(partial):
                    yield beam.pvalue.TaggedOutput(FINISHED, kept)
                marker = sinks.domain_path(work.path, tile_id)
                if marker.exists():  # its warning, kept by the interrupted run
                    yield beam.pvalue.TaggedOutput(UNFAMILIAR, sinks.read_domain_marker(marker))
                return
        tile = grid.Tile(tile_id, self._spec)
        try:
            image = self._source.read(tile.grid)
        except (ImageryError, OSError, ValueError) as exc:
            yield dead_letter(work, tile_id, "read", exc)
            return
        _counter("tiles_read").inc()
        valid = image.valid
        if region is not None and not image.empty:
            valid = valid & near_region(tile, parsed(region), self._spec.margin_m)
        if image.empty or not valid.any():
            _counter("tiles_empty").inc()
            if work:
                finish_tile(work, tile_id, self._empty(), tiles_empty=1, m2_covered=0)
            return
        yield tile_id, TileInput(image.rgb, valid)


def dead_letter(
    work: WorkDir | None, tile_id: str, stage: str, exc: BaseException
) -> beam.pvalue.TaggedOutput:
    """Count a failed tile, mark it in the work folder, and tag its record for the output."""
    _counter("tiles_failed").inc()
    record = sinks.DeadLetter(tile_id, stage, f"{type(exc).__name__}: {exc}")
    if work:
        sinks.write_dead_letter_marker(record, work.path)
    return beam.pvalue.TaggedOutput(DEAD_LETTER, record)


def finish_tile(work: WorkDir, tile_id: str, frame: Any, **figures: int) -> Path:
    """Keep a finished tile's result (any picklable frame), clear its failure marker; return
    where it is kept.

    ``figures`` (e.g. ``m2_covered``) are kept for the run summary (:func:`sinks.job_stats`),
    before the result, so that a finished tile always has them.
    """
    if figures:
        sinks.write_tile_stats(work.path, tile_id, **figures)
    path = sinks.write_partial(frame, sinks.partial_path(work.path, tile_id))
    sinks.failed_path(work.path, tile_id).unlink(missing_ok=True)
    return path


class ReadImagery(beam.PTransform):
    """Tile ids -> tagged outputs: main ``(id, TileInput)``, ``dead_letter``, ``finished``.

    Args:
        imagery: the imagery source spec.
        spec: the tiling grid.
        work: the per-tile work folder; None keeps none.
        empty: makes the result kept for a tile without imagery (footprints by default).
        bands: the 1-based (r, g, b) bands; None maps them from colour interpretation.
        region: the region's one-element PCollection (WKB): only pixels near it are kept.
        resumed: as :class:`ReadTileFn`'s.
    """

    def __init__(
        self,
        imagery: str,
        spec: grid.GridSpec,
        work: WorkDir | None = None,
        empty: Callable[[], Any] = postprocess.empty_footprints,
        bands: tuple[int, int, int] | None = None,
        region: beam.PCollection | None = None,
        resumed: Callable[[Path], Iterable[Any]] = sinks.read_back,
    ) -> None:
        super().__init__()
        self._fn = ReadTileFn(imagery, spec, work, empty, bands, resumed)
        self._region = region

    def expand(self, tiles: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        """Build the stage."""
        side = {} if self._region is None else {"region": beam.pvalue.AsSingleton(self._region)}
        return tiles | "ReadTile" >> beam.ParDo(self._fn, **side).with_outputs(
            DEAD_LETTER, FINISHED, UNFAMILIAR, main="images"
        )


class RunModel(beam.PTransform):
    """``(id, TileInput)`` -> ``(id, PredictionResult)`` through Beam's RunInference.

    Args:
        model: the checkpoint.
        config: device, bf16, batching, model sharing, backend.
    """

    def __init__(self, model: ModelRef, config: RuntimeConfig) -> None:
        super().__init__()
        self._handler = KeyedModelHandler(CheckpointModelHandler(model, config))

    def expand(self, images: beam.PCollection) -> beam.PCollection:
        """Build the stage."""
        return images | "RunInference" >> RunInference(self._handler)


class PolygonizeFn(beam.DoFn):
    """``(id, PredictionResult)`` -> the footprints the tile owns, as ``(shard token, part)``.

    A part (``sinks.ShardPart``) names the file that holds the tile's footprints: its partial in
    the work folder, or without one a file under ``parts`` (``sinks.part_url``); with neither it
    holds the rows.

    Args:
        spec: the tiling grid.
        post: the post-processing settings (``min_confidence`` resolved to a number).
        shard_level: S2 level of the shard key.
        work: the per-tile work folder; None keeps none.
        ranges: the model's training-imagery ranges (``pipelines.domain``); a tile outside
            them goes to the ``unfamiliar`` output too (its footprints are kept). None checks
            nothing.
        probabilities: also write each tile's probability raster under this output folder
            (:mod:`.probabilities`); None writes none.
        parts: without ``work``, keep each tile's footprints under this output folder until
            the shards are written; None carries them through the shards' GroupByKey.
    """

    def __init__(
        self,
        spec: grid.GridSpec,
        post: PostprocessConfig,
        shard_level: int,
        work: WorkDir | None,
        ranges: dict[str, Any] | None = None,
        probabilities: str | None = None,
        parts: str | None = None,
    ) -> None:
        self._parts = parts
        self._spec = spec
        self._probabilities = probabilities
        self._post = post
        self._shard_level = shard_level
        self._work = work
        self._ranges = ranges

    def process(
        self, element: tuple[str, PredictionResult], region: bytes | None = None
    ) -> Iterator[Any]:
        """Decode, polygonize and keep what the tile owns (and, given the side input ``region``,
        WKB, what lies inside it: a building outside is dropped and counted as
        ``outside_region``)."""
        tile_id, result = element
        tile = grid.Tile(tile_id, self._spec)
        try:
            frame = postprocess.footprints_for_tile(
                tile,
                result.inference,
                result.example.valid,
                self._post,
                shard_level=self._shard_level,
            )
        except (ValueError, MemoryError) as exc:
            yield dead_letter(self._work, tile_id, "postprocess", exc)
            return
        if self._probabilities is not None:
            try:
                write_probabilities(
                    result.inference, result.example.valid, tile.grid, self._probabilities, tile_id
                )
            except OSError as exc:
                yield dead_letter(self._work, tile_id, "probabilities", exc)
                return
        if self._ranges is not None:
            image = result.example
            stats = domain.tile_stats(image.rgb, image.valid, result.inference)
            reasons = domain.outside(stats, self._ranges)
            if reasons:
                _counter("tiles_unfamiliar").inc()
                if self._work:
                    sinks.write_domain_marker(tile_id, reasons, self._work.path)
                yield beam.pvalue.TaggedOutput(UNFAMILIAR, (tile_id, reasons))
        outside = 0
        if region is not None:
            frame, outside = postprocess.inside_region(frame, parsed(region))
            _counter("outside_region").inc(outside)
        covered = postprocess.covered_m2(tile, result.example.valid)
        _counter("m2_covered").inc(covered)
        _counter("buildings").inc(len(frame))
        partial = None
        if self._work:
            figures = {"tiles_empty": 0, "m2_covered": covered, "outside_region": outside}
            partial = finish_tile(self._work, tile_id, frame, **figures)
        elif self._parts is not None and len(frame):
            partial = sinks.write_partial(frame, sinks.part_url(self._parts, tile_id))
        yield from sinks.shard_parts(frame, partial)


class Polygonize(beam.PTransform):
    """Predictions -> tagged outputs: main (``(shard token, sinks.ShardPart)``) and ``dead_letter``.

    Args: as :class:`PolygonizeFn`'s, and ``region``: the region's one-element PCollection
    (WKB); given, buildings outside it are dropped.
    """

    def __init__(
        self,
        spec: grid.GridSpec,
        post: PostprocessConfig,
        shard_level: int,
        work: WorkDir | None = None,
        region: beam.PCollection | None = None,
        ranges: dict[str, Any] | None = None,
        probabilities: str | None = None,
        parts: str | None = None,
    ) -> None:
        super().__init__()
        self._fn = PolygonizeFn(spec, post, shard_level, work, ranges, probabilities, parts)
        self._region = region

    def expand(self, predictions: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        """Build the stage."""
        side = {} if self._region is None else {"region": beam.pvalue.AsSingleton(self._region)}
        return predictions | "DecodeAndPolygonize" >> beam.ParDo(self._fn, **side).with_outputs(
            DEAD_LETTER, UNFAMILIAR, main="footprints"
        )


def build_inference(
    p: beam.Pipeline,
    geometry: shapely.Geometry,
    config: InferConfig,
    model: ModelRef,
    *,
    imagery: str,
    work: WorkDir | None = None,
    settings: dict[str, Any] | None = None,
    input_ranges: dict[str, Any] | None = None,
) -> dict[str, beam.PCollection]:
    """Add the whole inference job to ``p``.

    Args:
        p: the pipeline.
        geometry: the region in lon/lat.
        config: the job (its ``grid``, ``postprocess`` and ``runtime`` go to their stages;
            ``postprocess.min_confidence`` already a number, see ``job.output_settings``).
        model: the checkpoint.
        imagery: the imagery source spec (the config's, or the embedded sample's).
        work: the per-tile work folder (progress and resume); None keeps none.
        settings: recorded in the manifest (``job.output_settings``).
        input_ranges: the checkpoint's training-imagery ranges
            (``models.checkpoint.read_input_ranges``); None checks no tile.

    Returns:
        The main PCollections: ``tiles``, ``footprints`` (``(shard token, sinks.ShardPart)``),
        ``dead_letters``, ``files``, ``summary``.
    """
    from open_buildings import __version__

    if not is_remote(config.output):
        Path(config.output).mkdir(parents=True, exist_ok=True)
    spec = config.grid.spec
    region_wkb = p | "Region" >> RegionInput(geometry, config.output)
    tiles = region_wkb | "CoverTiles" >> CoverTiles(spec)
    region = None if config.postprocess.keep_whole_tiles else region_wkb
    read = tiles | "ReadImagery" >> ReadImagery(
        imagery, spec, work, bands=config.bands, region=region, resumed=sinks.partial_parts
    )
    runtime = device_decode.job_runtime(config)
    predictions = read.images | "RunModel" >> RunModel(model, runtime)
    ranges = None if input_ranges is None else input_ranges["ranges"]
    probabilities = config.output if config.write_probabilities else None
    parts = None if work else config.output  # each tile's footprints wait there for the shards
    polygons = predictions | "Polygonize" >> Polygonize(
        spec, config.postprocess, config.shard_level, work, region, ranges, probabilities, parts
    )
    unfamiliar = (read[UNFAMILIAR], polygons[UNFAMILIAR]) | "AllUnfamiliar" >> beam.Flatten()
    kept = (polygons.footprints, read[FINISHED]) | "AllFootprints" >> beam.Flatten()
    dead = (read[DEAD_LETTER], polygons[DEAD_LETTER]) | "AllDeadLetters" >> beam.Flatten()
    files = kept | "WriteShards" >> WriteShards(config.output, config.formats)
    summary = files | "WriteManifest" >> WriteManifest(
        config.output,
        dead,
        code_version=__version__,
        model={"name": model.name, "sha256": model.sha256}
        | ({} if model.moe_capacity is None else {"moe_capacity": model.moe_capacity}),
        settings=settings,
        unfamiliar=unfamiliar,
        domain={"checked": input_ranges is not None}
        | ({} if input_ranges is None else {"measured_on": input_ranges.get("measured_on")}),
    )
    return {
        "tiles": tiles,
        "footprints": kept,
        "dead_letters": dead,
        "files": files,
        "summary": summary,
    }
