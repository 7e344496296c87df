"""The region as one side input, read from a file: the job graph does not carry it.

Dataflow refuses a job graph over 10 MB, and a detailed outline is megabytes of WKB (Africa at
149k vertices: 2.4 MB). Embedded in each transform that needs it, it went into the graph four
times; here it is written once beside the output (``.region.wkb``) and read by one worker into a
one-element PCollection that the tiling and clipping stages take as a side input. Each worker
parses and prepares it once (:func:`parsed`).
"""

from __future__ import annotations

import os

import apache_beam as beam
import shapely

from open_buildings.pipelines.sinks import put
from open_buildings.remote import read_bytes

REGION_FILE = ".region.wkb"
_PARSED: dict[int, shapely.Geometry] = {}


def write_region_file(geometry: shapely.Geometry, folder: str) -> str:
    """Write the region's WKB into ``folder`` (a local path or a URL); return the file's path."""
    wkb = shapely.to_wkb(geometry)
    return put(f"{folder.rstrip('/')}/{REGION_FILE}", lambda handle: handle.write(wkb))


def parsed(wkb: bytes) -> shapely.Geometry:
    """The region of ``wkb``, parsed and prepared once per worker process."""
    key = hash(wkb)  # bytes cache their hash: a repeat lookup costs nothing
    if key not in _PARSED:
        geometry = shapely.from_wkb(wkb)
        shapely.prepare(geometry)
        _PARSED.clear()
        _PARSED[key] = geometry
    return _PARSED[key]


class RegionInput(beam.PTransform):
    """Nothing -> one element: the region's WKB, read from the file :func:`write_region_file` made.

    Args:
        geometry: the region in lon/lat.
        folder: where the file goes (the job's output folder); None embeds the WKB in the
            graph once instead (small jobs, tests).
    """

    def __init__(self, geometry: shapely.Geometry, folder: str | os.PathLike[str] | None) -> None:
        super().__init__()
        self._geometry = geometry
        self._folder = None if folder is None else os.fspath(folder)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        """Build the stage."""
        if self._folder is None:
            return pbegin | "Embedded" >> beam.Create([shapely.to_wkb(self._geometry)])
        path = write_region_file(self._geometry, self._folder)
        return pbegin | "File" >> beam.Create([path]) | "Read" >> beam.Map(read_bytes)
