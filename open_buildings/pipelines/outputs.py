"""The Beam transforms that write a job's outputs: one file per shard and format, then the manifest.

Thin adapters over :mod:`.sinks`: ``WriteShards`` groups the tiles' shard parts by shard token
and writes each shard once (``sinks.write_shard``); ``WriteManifest`` waits for every shard and
writes the dead-letter list and the manifest last (``sinks.finalize``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from open_buildings.pipelines import sinks


class WriteShardFn(beam.DoFn):
    """``(token, parts)`` -> ``(file name, FileRecord)`` per file written."""

    def __init__(self, output: str, formats: tuple[str, ...]) -> None:
        self._output = output
        self._formats = formats

    def process(self, element: tuple[str, Any]) -> Iterator[Any]:
        """Write one shard (idempotent: see ``sinks.write_shard``)."""
        token, parts = element
        yield from sinks.write_shard(token, parts, self._output, self._formats)


class WriteShards(beam.PTransform):
    """``(shard token, sinks.ShardPart)`` -> one file per shard and format, -> their
    ``(name, FileRecord)``.

    All of a shard's parts meet in one GroupByKey value and are written by one call, tile by
    tile (``sinks.write_shard``); a part names its tile's partial file where the run keeps one,
    so the group holds paths, not footprints. A retried bundle rewrites the same bytes through
    an atomic rename, so it can neither duplicate rows nor leave a torn file (Beam's
    ``fileio.WriteToFiles`` would instead need its own temp-and-finalize step to achieve the same
    for a single file per shard).

    Args:
        output: the output folder.
        formats: ``"csv"`` and/or ``"parquet"``.
    """

    def __init__(self, output: str, formats: tuple[str, ...]) -> None:
        super().__init__()
        self._output = output
        self._formats = formats

    def expand(self, parts: beam.PCollection) -> beam.PCollection:
        """Build the stages."""
        return (
            parts
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
        settings: what decided which footprints were written (threshold, region clipping).
        unfamiliar: ``(tile id, reasons)`` of the tiles unlike the model's training imagery.
        domain: what the manifest says about that check (``checked``, ``measured_on``); the
            tiles are added to it as ``tiles``.
    """

    def __init__(
        self,
        output: str,
        dead_letters: beam.PCollection,
        *,
        code_version: str,
        model: dict[str, Any] | None,
        settings: dict[str, Any] | None = None,
        unfamiliar: beam.PCollection | None = None,
        domain: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._output = output
        self._dead = dead_letters
        self._code_version = code_version
        self._model = model
        self._settings = settings
        self._unfamiliar = unfamiliar
        self._domain = domain

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        """Build the stages."""
        dead = self._dead | "CollectDeadLetters" >> beam.combiners.ToList()
        unfamiliar = (
            self._unfamiliar
            if self._unfamiliar is not None
            else records.pipeline | "NoUnfamiliar" >> beam.Create([])
        ) | "CollectUnfamiliar" >> beam.combiners.ToList()
        return (
            records
            | "CollectRecords" >> beam.combiners.ToList()
            | "Finalize"
            >> beam.Map(
                _finalize,
                beam.pvalue.AsSingleton(dead),
                beam.pvalue.AsSingleton(unfamiliar),
                self._output,
                self._code_version,
                self._model,
                self._settings,
                self._domain,
            )
        )


def _finalize(
    records: list[Any],
    dead: list[sinks.DeadLetter],
    unfamiliar: list[tuple[str, list[str]]],
    output: str,
    code_version: str,
    model: dict[str, Any] | None,
    settings: dict[str, Any] | None,
    domain: dict[str, Any] | None,
) -> dict[str, Any]:
    if domain is not None:
        domain = dict(domain) | {"tiles": {t: list(r) for t, r in sorted(unfamiliar)}}
    return sinks.finalize(
        output,
        records,
        dead,
        code_version=code_version,
        model=model,
        settings=settings,
        domain=domain,
    )
