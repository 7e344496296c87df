"""The detection job: OWL-ViT building boxes over a region's tiles, as a Beam pipeline.

It walks the region as ``ob-infer`` does, with the same transforms: :class:`.transforms.CoverTiles`
(tiles), :class:`.transforms.ReadImagery` (pixels on the 50 cm grid, failures to the dead-letter
output, per-tile results kept for ``--resume``). Each tile is then cut into windows and its boxes
merged by NMS (:func:`open_buildings.models.owlvit_windows.detect_pixels`); a box is kept by the
tile whose core holds its centre, so each is written once. Boxes are axis-aligned on the tile's
UTM grid; in the output (EPSG:4326) they are the reprojected rectangles. All boxes meet in one
place and are written as one GeoJSON file, best first, atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from open_buildings.errors import ImageryError
from open_buildings.geo import grid
from open_buildings.geo.imagery import ImagerySource, TileImage
from open_buildings.models.owlvit_windows import DetectOptions, detect_pixels, example_embedding
from open_buildings.pipelines import sinks, transforms
from open_buildings.pipelines.region_input import RegionInput
from open_buildings.pipelines.runtime import TileInput

__all__ = ["DetectFn", "build_detection", "detect_tile", "empty_boxes", "example_query"]

BOX_COLUMNS = ["score", "query", "tile"]


def empty_boxes() -> gpd.GeoDataFrame:
    """Return a box frame with no rows and the columns :func:`detect_tile` gives."""
    return gpd.GeoDataFrame({c: [] for c in BOX_COLUMNS}, geometry=[], crs="EPSG:4326")


def _pixel_boxes_to_crs(boxes: np.ndarray, transform: Any) -> np.ndarray:
    """``(N, 4)`` pixel boxes -> ``(N, 4)`` boxes ``(x0, y0, x1, y1)`` in the grid's CRS."""
    x0, y0 = transform @ (boxes[:, 0], boxes[:, 1])
    x1, y1 = transform @ (boxes[:, 2], boxes[:, 3])
    return np.stack(
        [np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)], axis=1
    )


def detect_tile(
    detector: Any,
    tile: grid.Tile,
    image: TileImage | TileInput,
    queries: Any,
    options: DetectOptions = DetectOptions(),  # noqa: B008 - frozen, never mutated
) -> gpd.GeoDataFrame:
    """Detect in one tile and keep the boxes whose centre lies in the tile's core.

    Args:
        detector: The detector (``models.owlvit_detector.OwlViTDetector``).
        tile: The tile.
        image: Its pixels (``rgb`` and ``valid`` on ``tile.grid``).
        queries: ``(Q, D)`` query embeddings (tensor).
        options: How to run the detector.

    Returns:
        A GeoDataFrame in EPSG:4326 with columns ``score``, ``query``, ``tile`` and the box.
    """
    if getattr(image, "empty", False):
        return empty_boxes()
    boxes, scores, labels = detect_pixels(detector, image.rgb, queries, options, image.valid)
    local = _pixel_boxes_to_crs(boxes, tile.grid.transform)
    to_lonlat = Transformer.from_crs(tile.grid.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform((local[:, 0] + local[:, 2]) / 2, (local[:, 1] + local[:, 3]) / 2)
    owned = tile.owns(np.asarray(lon), np.asarray(lat)) if len(local) else np.zeros(0, bool)
    geometry = gpd.GeoSeries(shapely.box(*local[owned].T), crs=tile.grid.crs).to_crs(4326)
    return gpd.GeoDataFrame(
        {
            "score": scores[owned],
            "query": labels[owned],
            "tile": np.full(int(owned.sum()), tile.id, dtype=object),
        },
        geometry=geometry.values,
        crs="EPSG:4326",
    )


def example_query(
    detector: Any,
    source: ImagerySource,
    example: tuple[float, float, float, float],
    *,
    spec: grid.GridSpec | None = None,
    window: int | None = None,
) -> Any:
    """Turn the lon/lat box of one building in the imagery into a ``(1, D)`` query.

    The tile holding the box's centre is read and the box is found in its pixels; then
    :func:`open_buildings.models.owlvit_windows.example_embedding` picks the embedding.

    Args:
        detector: The detector.
        source: The imagery.
        example: ``(west, south, east, north)`` in degrees.
        spec: The tiling grid.
        window: Window side in pixels (None: the detector's pretraining size).

    Returns:
        The query embedding, ``(1, D)``.

    Raises:
        ImageryError: No imagery covers the example box, or the box is empty.
    """
    west, south, east, north = example
    if not (east > west and north > south):
        raise ImageryError(f"--example {example}: give west,south,east,north with east > west")
    spec = spec or grid.GridSpec()
    tile = grid.tile_for_point((west + east) / 2, (south + north) / 2, spec)
    image = source.read(tile.grid)
    to_local = Transformer.from_crs("EPSG:4326", tile.grid.crs, always_xy=True)
    xs, ys = to_local.transform([west, east, east, west], [south, south, north, north])
    cols, rows = ~tile.grid.transform @ (np.asarray(xs), np.asarray(ys))
    height, width = image.rgb.shape[1:]
    x0, x1 = float(np.clip(cols.min(), 0, width)), float(np.clip(cols.max(), 0, width))
    y0, y1 = float(np.clip(rows.min(), 0, height)), float(np.clip(rows.max(), 0, height))
    inside = image.valid[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
    if x1 <= x0 or y1 <= y0 or not inside.any():
        raise ImageryError(
            f"no imagery covers the example box {example}; pick a building inside the imagery"
        )
    return example_embedding(detector, image.rgb, (x0, y0, x1, y1), window=window)


class DetectFn(beam.DoFn):
    """``(tile id, TileInput)`` -> the tile's boxes; a failure goes to the dead-letter output.

    Args:
        model: the OWL-ViT checkpoint (``models.convert.owlvit.load_detector`` reads it).
        queries: ``(Q, D)`` float32 query embeddings.
        spec: the tiling grid.
        options: how to run the detector.
        device: ``"cpu"`` or ``"cuda"``.
        work: the per-tile work folder; None keeps none.
    """

    def __init__(
        self,
        model: str,
        queries: np.ndarray,
        spec: grid.GridSpec,
        options: DetectOptions,
        device: str,
        work: transforms.WorkDir | None,
    ) -> None:
        self._model = model
        self._queries = np.asarray(queries, dtype=np.float32)
        self._spec = spec
        self._options = options
        self._device = device
        self._work = work
        self._detector: Any = None

    def setup(self) -> None:
        """Load the detector once per worker."""
        from open_buildings.models.convert.owlvit import load_detector
        from open_buildings.pipelines.runtime import resolve_device

        detector, _ = load_detector(self._model)
        self._detector = detector.to(resolve_device(self._device)).eval()

    def process(self, element: tuple[str, TileInput]) -> Iterator[Any]:
        """Detect in one tile."""
        import torch

        tile_id, image = element
        tile = grid.Tile(tile_id, self._spec)
        try:
            with torch.inference_mode():
                frame = detect_tile(
                    self._detector, tile, image, torch.from_numpy(self._queries), self._options
                )
        except (ValueError, MemoryError) as exc:
            yield transforms.dead_letter(self._work, tile_id, "detect", exc)
            return
        if self._work:
            transforms.finish_tile(self._work, tile_id, frame)
        yield frame


def _write_geojson(frames: list[gpd.GeoDataFrame], dead: list[sinks.DeadLetter], out: str) -> int:
    parts = [f for f in frames if len(f)]
    frame = (
        gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=4326)
        if parts
        else empty_boxes()
    )
    # A total order that depends only on the boxes (Beam gives the tiles in no order).
    wkb = shapely.to_wkb(frame.geometry.to_numpy(), hex=True)
    keys = (wkb, frame["query"].to_numpy(), frame["tile"].to_numpy(dtype=str))
    order = np.lexsort((*keys, -frame["score"].to_numpy(dtype=float)))
    frame = frame.iloc[order].reset_index(drop=True)
    target = Path(out)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(frame.to_json(drop_id=True), encoding="utf-8")
    os.replace(tmp, target)
    dead_path = dead_letter_path(target)
    if dead:
        lines = [d.to_json() + "\n" for d in sorted(dead, key=lambda d: (d.tile_id, d.stage))]
        dead_path.write_text("".join(lines), encoding="utf-8")
    else:
        dead_path.unlink(missing_ok=True)
    return len(frame)


def dead_letter_path(out: str | os.PathLike[str]) -> Path:
    """Return where a detection run lists its failed tiles: ``<out>.dead_letter.jsonl``."""
    target = Path(out)
    return target.with_name(f"{target.name}.{sinks.DEAD_LETTER_NAME}")


def build_detection(
    p: beam.Pipeline,
    geometry: shapely.Geometry,
    *,
    imagery: str,
    model: str,
    queries: np.ndarray,
    out: str,
    spec: grid.GridSpec,
    options: DetectOptions,
    device: str = "cpu",
    work: transforms.WorkDir | None = None,
) -> dict[str, beam.PCollection]:
    """Add the detection job to ``p``: tiles -> pixels -> boxes -> one GeoJSON file.

    Args:
        p: the pipeline (``pipelines.job.make_pipeline``).
        geometry: the region in lon/lat.
        imagery: the imagery source spec.
        model: the OWL-ViT checkpoint (file or folder).
        queries: ``(Q, D)`` query embeddings.
        out: the GeoJSON file to write.
        spec: the tiling grid.
        options: how to run the detector.
        device: ``"cpu"`` or ``"cuda"``.
        work: the per-tile work folder (progress and resume); None keeps none.

    Returns:
        ``tiles``, ``boxes`` (frames), ``dead_letters`` and ``written`` (the box count).
    """
    region = p | "Region" >> RegionInput(geometry, None)  # ob-detect's regions are small
    tiles = region | "CoverTiles" >> transforms.CoverTiles(spec)
    read = tiles | "ReadImagery" >> transforms.ReadImagery(imagery, spec, work, empty=empty_boxes)
    found = read.images | "Detect" >> beam.ParDo(
        DetectFn(model, queries, spec, options, device, work)
    ).with_outputs(transforms.DEAD_LETTER, main="boxes")
    frames = (found.boxes, read[transforms.FINISHED]) | "AllBoxes" >> beam.Flatten()
    dead = (read[transforms.DEAD_LETTER], found[transforms.DEAD_LETTER]) | "AllDead" >> (
        beam.Flatten()
    )
    dead_list = dead | "CollectDeadLetters" >> beam.combiners.ToList()
    written = (
        frames
        | "CollectBoxes" >> beam.combiners.ToList()
        | "WriteGeoJSON" >> beam.Map(_write_geojson, beam.pvalue.AsSingleton(dead_list), out)
    )
    return {"tiles": tiles, "boxes": frames, "dead_letters": dead, "written": written}
