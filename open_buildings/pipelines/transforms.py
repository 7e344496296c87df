"""The inference pipeline's Beam transforms: labelled composites over ``pipelines.stages``.

``build_inference`` wires them::

    CoverTiles -> ReadImagery -> RunInference -> Polygonize -> WriteShards -> WriteManifest
                     |  dead letters  ---------------^-----------------------------^

Each DoFn is a thin adapter; the work is in :mod:`open_buildings.pipelines.stages`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import shapely
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from open_buildings.errors import ImageryError
from open_buildings.geo import grid
from open_buildings.pipelines import stages
from open_buildings.pipelines.inference import CheckpointModelHandler, ModelRef

NAMESPACE = "open_buildings"
DEAD_LETTER = "dead_letter"
FINISHED = "finished"
COUNTERS = ("tiles_read", "tiles_empty", "tiles_failed", "tiles_resumed", "buildings", "m2_covered")


def _counter(name: str) -> Any:
    return Metrics.counter(NAMESPACE, name)


@dataclass(frozen=True)
class Settings:
    """What the transforms need to know, in one picklable value.

    Attributes:
        spec: the tiling grid.
        imagery: the imagery source spec for ``geo.imagery.open_imagery``.
        output: the output folder (local or ``gs://``).
        formats: ``"csv"`` and/or ``"parquet"``.
        shard_level: S2 level of the output shards.
        min_confidence: drop buildings below this confidence.
        simplify_m: polygon simplification tolerance in metres.
        min_area_m2: drop smaller buildings.
        work_dir: a local folder for per-tile results (progress, resume); None keeps none.
        resume: reuse the per-tile results already in ``work_dir``.
    """

    spec: grid.GridSpec
    imagery: str
    output: str
    formats: tuple[str, ...] = ("csv", "parquet")
    shard_level: int = 6
    min_confidence: float = 0.0
    simplify_m: float = 0.5
    min_area_m2: float = 1.0
    work_dir: str | None = None
    resume: bool = False


class CoverTiles(beam.PTransform):
    """Region -> tile ids, streamed and spread over workers.

    The region is cut into coarse S2 chunks on one worker; the chunks are reshuffled, each is
    expanded into its tiles on whichever worker gets it, and the tiles are reshuffled again so the
    expensive stages after this one share them evenly.

    Args:
        geometry: the region in lon/lat.
        spec: the tiling grid.
    """

    def __init__(self, geometry: shapely.Geometry, spec: grid.GridSpec) -> None:
        super().__init__()
        self._wkb = shapely.to_wkb(geometry)
        self._spec = spec

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        """Build the stages."""
        spec = self._spec
        return (
            pbegin
            | "Region" >> beam.Create([self._wkb])
            | "Chunks" >> beam.FlatMap(_chunks, spec.level)
            | "SpreadChunks" >> beam.Reshuffle()
            | "TilesOfChunk" >> beam.FlatMap(_tiles_of_chunk, self._wkb, spec)
            | "SpreadTiles" >> beam.Reshuffle()
        )


def _chunks(wkb: bytes, tile_level: int) -> Iterator[str]:
    return stages.tile_chunks(shapely.from_wkb(wkb), tile_level)


def _tiles_of_chunk(chunk: str, wkb: bytes, spec: grid.GridSpec) -> Iterator[str]:
    return stages.tiles_in_chunk(shapely.from_wkb(wkb), chunk, spec)


class ReadTileFn(beam.DoFn):
    """Tile id -> ``(tile id, TileInput)``; failures to the dead-letter output, empties skipped.

    With ``resume``, a tile whose per-tile result exists is not read: its footprints go to the
    ``finished`` output instead.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._source: Any = None

    def setup(self) -> None:
        """Open the imagery source once per worker."""
        from open_buildings.geo.imagery import open_imagery

        self._source = open_imagery(self._settings.imagery)

    def process(self, tile_id: str) -> Iterator[Any]:
        """Read one tile."""
        s = self._settings
        if s.work_dir and s.resume:
            partial = stages.partial_path(s.work_dir, tile_id)
            if partial.exists():
                _counter("tiles_resumed").inc()
                yield beam.pvalue.TaggedOutput(FINISHED, stages.read_partial(partial))
                return
        tile = grid.Tile(tile_id, s.spec)
        try:
            image = stages.read_tile(self._source, tile)
        except (ImageryError, OSError, ValueError) as exc:
            _counter("tiles_failed").inc()
            record = stages.DeadLetter(tile_id, "read", f"{type(exc).__name__}: {exc}")
            if s.work_dir:
                stages.write_dead_letter_marker(record, s.work_dir)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, record)
            return
        _counter("tiles_read").inc()
        if image.empty:
            _counter("tiles_empty").inc()
            if s.work_dir:
                _finish_tile(s.work_dir, tile_id, stages.empty_footprints())
            return
        _counter("m2_covered").inc(stages.covered_m2(tile, image))
        yield tile_id, stages.TileInput(image.rgb, image.valid)


def _finish_tile(work_dir: str, tile_id: str, frame: Any) -> None:
    stages.write_partial(frame, stages.partial_path(work_dir, tile_id))
    stages.failed_path(work_dir, tile_id).unlink(missing_ok=True)


class ReadImagery(beam.PTransform):
    """Tile ids -> tagged outputs: main ``(id, TileInput)``, ``dead_letter``, ``finished``.

    Args:
        settings: the job's settings.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings

    def expand(self, tiles: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        """Build the stage."""
        return tiles | "ReadTile" >> beam.ParDo(ReadTileFn(self._settings)).with_outputs(
            DEAD_LETTER, FINISHED, main="images"
        )


class RunModel(beam.PTransform):
    """``(id, TileInput)`` -> ``(id, PredictionResult)`` through Beam's RunInference.

    Args:
        model: the checkpoint.
        device: ``"cpu"`` or ``"cuda"``.
        bf16: bfloat16 autocast.
        min_batch_size: the smallest batch.
        max_batch_size: the largest batch.
        share_model_across_processes: one model per machine.
        backend: ``"auto"``, ``"torch"`` or ``"onnxruntime"`` (``runtime.prepare_model``).
    """

    def __init__(
        self,
        model: ModelRef,
        *,
        device: str = "cpu",
        bf16: bool = False,
        min_batch_size: int = 1,
        max_batch_size: int = 4,
        share_model_across_processes: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self._handler = KeyedModelHandler(
            CheckpointModelHandler(
                model,
                device=device,
                bf16=bf16,
                min_batch_size=min_batch_size,
                max_batch_size=max_batch_size,
                share_model_across_processes=share_model_across_processes,
                backend=backend,
            )
        )

    def expand(self, images: beam.PCollection) -> beam.PCollection:
        """Build the stage."""
        return images | "RunInference" >> RunInference(self._handler)


class PolygonizeFn(beam.DoFn):
    """``(id, PredictionResult)`` -> the footprints the tile owns (a GeoDataFrame)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def process(self, element: tuple[str, PredictionResult]) -> Iterator[Any]:
        """Decode, polygonize and keep what the tile owns."""
        s = self._settings
        tile_id, result = element
        tile = grid.Tile(tile_id, s.spec)
        try:
            frame = stages.footprints_for_tile(
                tile,
                result.inference,
                result.example.valid,
                min_confidence=s.min_confidence,
                shard_level=s.shard_level,
                simplify_m=s.simplify_m,
                min_area_m2=s.min_area_m2,
            )
        except (ValueError, MemoryError) as exc:
            _counter("tiles_failed").inc()
            record = stages.DeadLetter(tile_id, "postprocess", f"{type(exc).__name__}: {exc}")
            if s.work_dir:
                stages.write_dead_letter_marker(record, s.work_dir)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, record)
            return
        _counter("buildings").inc(len(frame))
        if s.work_dir:
            _finish_tile(s.work_dir, tile_id, frame)
        yield frame


class Polygonize(beam.PTransform):
    """Predictions -> tagged outputs: main (footprint frames) and ``dead_letter``.

    Args:
        settings: the job's settings.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings

    def expand(self, predictions: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        """Build the stage."""
        return predictions | "DecodeAndPolygonize" >> beam.ParDo(
            PolygonizeFn(self._settings)
        ).with_outputs(DEAD_LETTER, main="footprints")


class WriteShardFn(beam.DoFn):
    """``(token, frames)`` -> ``(file name, FileRecord)`` per file written."""

    def __init__(self, output: str, formats: tuple[str, ...]) -> None:
        self._output = output
        self._formats = formats

    def process(self, element: tuple[str, Any]) -> Iterator[Any]:
        """Write one shard (idempotent: see ``stages.write_shard``)."""
        token, frames = element
        yield from stages.write_shard(token, frames, self._output, self._formats)


class WriteShards(beam.PTransform):
    """Footprint frames -> one file per shard and format, -> their ``(name, FileRecord)``.

    All of a shard's rows meet in one GroupByKey value, are put in a canonical order and written
    by one call. A retried bundle rewrites the same bytes through an atomic rename, so it can
    neither duplicate rows nor leave a torn file (Beam's ``fileio.WriteToFiles`` would instead need
    its own temp-and-finalize step to achieve the same for a single file per shard).

    Args:
        output: the output folder.
        formats: ``"csv"`` and/or ``"parquet"``.
    """

    def __init__(self, output: str, formats: tuple[str, ...]) -> None:
        super().__init__()
        self._output = output
        self._formats = formats

    def expand(self, frames: beam.PCollection) -> beam.PCollection:
        """Build the stages."""
        return (
            frames
            | "KeyByShard" >> beam.FlatMap(stages.split_by_shard)
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(WriteShardFn(self._output, self._formats))
        )


class WriteManifest(beam.PTransform):
    """Shard records (+ dead letters as a side input) -> dead_letter.jsonl, then manifest.json.

    CombineGlobally waits for every shard write, so the manifest is written last; its presence
    means every file it lists is complete.

    Args:
        output: the output folder.
        dead_letters: the failed tiles.
        code_version: this package's version.
        model: ``{"name", "sha256"}`` for the manifest (and ``moe_capacity`` when one was set).
    """

    def __init__(
        self,
        output: str,
        dead_letters: beam.PCollection,
        *,
        code_version: str,
        model: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        self._output = output
        self._dead = dead_letters
        self._code_version = code_version
        self._model = model

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        """Build the stages."""
        dead = self._dead | "CollectDeadLetters" >> beam.combiners.ToList()
        return (
            records
            | "CollectRecords" >> beam.combiners.ToList()
            | "Finalize"
            >> beam.Map(
                _finalize,
                beam.pvalue.AsSingleton(dead),
                self._output,
                self._code_version,
                self._model,
            )
        )


def _finalize(
    records: list[Any],
    dead: list[stages.DeadLetter],
    output: str,
    code_version: str,
    model: dict[str, Any] | None,
) -> dict[str, Any]:
    return stages.finalize(output, records, dead, code_version=code_version, model=model)


def build_inference(
    p: beam.Pipeline,
    geometry: shapely.Geometry,
    settings: Settings,
    model: ModelRef,
    *,
    device: str = "cpu",
    bf16: bool = False,
    min_batch_size: int = 1,
    max_batch_size: int = 4,
    share_model_across_processes: bool = False,
    backend: str = "auto",
) -> dict[str, beam.PCollection]:
    """Add the whole inference job to ``p``.

    Args:
        p: the pipeline.
        geometry: the region in lon/lat.
        settings: grid, imagery, output and post-processing settings.
        model: the checkpoint.
        device: ``"cpu"`` or ``"cuda"``.
        bf16: bfloat16 autocast.
        min_batch_size: the smallest inference batch.
        max_batch_size: the largest inference batch.
        share_model_across_processes: one model per machine.
        backend: ``"auto"``, ``"torch"`` or ``"onnxruntime"`` (``runtime.prepare_model``).

    Returns:
        The main PCollections: ``tiles``, ``footprints``, ``dead_letters``, ``files``,
        ``summary``.
    """
    from open_buildings import __version__

    if not stages.is_remote(settings.output):
        Path(settings.output).mkdir(parents=True, exist_ok=True)
    tiles = p | "CoverTiles" >> CoverTiles(geometry, settings.spec)
    read = tiles | "ReadImagery" >> ReadImagery(settings)
    predictions = read.images | "RunModel" >> RunModel(
        model,
        device=device,
        bf16=bf16,
        min_batch_size=min_batch_size,
        max_batch_size=max_batch_size,
        share_model_across_processes=share_model_across_processes,
        backend=backend,
    )
    polygons = predictions | "Polygonize" >> Polygonize(settings)
    frames = (polygons.footprints, read[FINISHED]) | "AllFootprints" >> beam.Flatten()
    dead = (read[DEAD_LETTER], polygons[DEAD_LETTER]) | "AllDeadLetters" >> beam.Flatten()
    files = frames | "WriteShards" >> WriteShards(settings.output, settings.formats)
    summary = files | "WriteManifest" >> WriteManifest(
        settings.output,
        dead,
        code_version=__version__,
        model={"name": model.name, "sha256": model.sha256}
        | ({} if model.moe_capacity is None else {"moe_capacity": model.moe_capacity}),
    )
    return {
        "tiles": tiles,
        "footprints": frames,
        "dead_letters": dead,
        "files": files,
        "summary": summary,
    }
