"""The region reaches the workers once, from a file: the job graph stays small however detailed."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import numpy as np
import shapely

from open_buildings.pipelines import region_input, transforms
from open_buildings.pipelines.config import InferConfig
from open_buildings.pipelines.runtime import ModelRef
from open_buildings.remote import read_bytes


def _detailed_outline(vertices: int) -> shapely.Polygon:
    """A star-shaped outline around Nairobi with this many vertices (an Africa-sized WKB)."""
    angle = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    radius = 0.02 * (1 + 0.3 * np.sin(angle * 997))
    return shapely.Polygon(
        np.column_stack([36.9 + radius * np.cos(angle), -1.3 + radius * np.sin(angle)])
    )


def _graph_bytes(geometry: shapely.Geometry, output: Path, keep_whole_tiles: bool = False) -> int:
    config = InferConfig(
        output=str(output), postprocess={"keep_whole_tiles": keep_whole_tiles}, runner="direct"
    )
    p = beam.Pipeline(runner="DirectRunner")  # built, never run
    model = ModelRef("m", "m.safetensors", "0" * 64)
    transforms.build_inference(p, geometry, config, model, imagery="x.tif")
    return len(p.to_runner_api().SerializeToString())


def test_a_detailed_region_is_not_carried_by_the_job_graph(tmp_path: Path) -> None:
    outline = _detailed_outline(149_000)  # the detailed Africa outline's vertex count
    wkb = shapely.to_wkb(outline)
    assert len(wkb) > 2_000_000
    small = _graph_bytes(shapely.box(36.9, -1.31, 36.91, -1.3), tmp_path / "small")
    detailed = _graph_bytes(outline, tmp_path / "detailed")
    assert detailed < small + 10_000, (small, detailed)  # the outline is in neither graph
    assert detailed < 1_000_000  # far under Dataflow's 10 MB graph limit
    written = tmp_path / "detailed" / region_input.REGION_FILE
    assert written.read_bytes() == wkb
    assert read_bytes(str(written)) == wkb
    assert region_input.parsed(wkb).equals(outline)
