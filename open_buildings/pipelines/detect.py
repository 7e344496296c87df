"""``ob-detect``: OWL-ViT building boxes over a region or an image, as GeoJSON, and their box AP.

The detector (:class:`~open_buildings.models.owlvit.OwlViTDetector`, loaded from a published
OWL-ViT checkpoint by :func:`~open_buildings.models.convert.owlvit.load_detector`) runs over the
same 50 cm tiles as ``ob-infer``: each tile is read on its grid, cut into overlapping windows the
size the detector was trained at, and the windows' boxes are merged with NMS. A box is written by
the tile whose core holds its centre, so each is written once. Boxes are axis-aligned on the
tile's UTM grid; in the GeoJSON (EPSG:4326) they are the reprojected rectangles.

It is queried in one of two ways:

- ``--query FILE``: query embeddings ``(Q, D)`` in a ``.npy`` or ``.safetensors`` file (one
  tensor, or one named ``queries``). OWL-ViT's text tower is not part of this project; make the
  file once with transformers, from the same checkpoint::

      import numpy as np, torch
      from transformers import OwlViTForObjectDetection, OwlViTProcessor

      name = "google/owlvit-base-patch32"  # or a local folder
      model = OwlViTForObjectDetection.from_pretrained(name)
      processor = OwlViTProcessor.from_pretrained(name)
      inputs = processor(text=["a photo of a building", "a roof"], return_tensors="pt")
      with torch.no_grad():
          out = model.owlvit.get_text_features(**inputs)
      text = getattr(out, "pooler_output", out)  # an output object in transformers 5
      np.save("building_queries.npy", text.numpy())

- ``--example W,S,E,N``: the lon/lat box of one building in the imagery (image-conditioned
  one-shot detection, :meth:`~open_buildings.models.owlvit.OwlViTDetector.embed_example`).

With ``--truth LABELS`` the boxes are scored against building labels (each polygon's bounding box
in the UTM zone of the labels) with COCO box AP (:mod:`open_buildings.evaluation.boxes`), over
the labels and boxes whose centre lies in the region.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import torch
from pyproj import Transformer

from open_buildings.errors import (
    CheckpointError,
    EvaluationError,
    ImageryError,
    OpenBuildingsError,
    OutputExistsError,
)
from open_buildings.evaluation.boxes import box_map, geometry_boxes
from open_buildings.evaluation.coco import CocoResult
from open_buildings.evaluation.io import Footprints, metric_crs, read_instances, to_crs
from open_buildings.geo import grid
from open_buildings.geo.imagery import ImagerySource, TileImage, open_imagery
from open_buildings.models.owlvit import OwlViTDetector

__all__ = [
    "DetectOptions",
    "detect_main",
    "detect_parser",
    "detect_pixels",
    "detect_region",
    "detect_tile",
    "evaluate_boxes",
    "example_query",
    "load_queries",
]

#: Files taken as an image (the region is then the image's footprint) rather than a region.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp")
#: Largest query file read (bytes): 100,000 queries of 512 float32 are 200 MB.
MAX_QUERY_BYTES = 256_000_000


@dataclass(frozen=True)
class DetectOptions:
    """How the detector is run over imagery.

    Attributes:
        window: Side of the square windows a tile is cut into, in pixels (None: the detector's
            pretraining size).
        overlap: Overlap of neighbouring windows, in pixels.
        threshold: Keep boxes scoring above this.
        nms_iou: Suppress a box overlapping a better one of the same query by more than this.
        batch_size: Windows per forward pass.
    """

    window: int | None = None
    overlap: int = 64
    threshold: float = 0.1
    nms_iou: float = 0.3
    batch_size: int = 8


def load_queries(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read query embeddings and L2-normalise them (as OWL-ViT does with text embeddings).

    Args:
        path: A ``.npy`` file (no pickles), or a ``.safetensors`` file holding one tensor or a
            tensor named ``queries``; shaped ``(Q, D)`` or ``(D,)``.

    Returns:
        ``(Q, D)`` float32, each row of norm 1.

    Raises:
        CheckpointError: The file is missing, too large, unreadable, or not finite ``(Q, D)``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"query file {path} does not exist; see `ob-detect --help`")
    if path.stat().st_size > MAX_QUERY_BYTES:
        raise CheckpointError(f"query file {path} is over {MAX_QUERY_BYTES:,} bytes")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if not np.issubdtype(array.dtype, np.number):
                raise CheckpointError(f"{path} holds {array.dtype}, not numbers")
            queries = torch.from_numpy(np.asarray(array, dtype=np.float32))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if "queries" in tensors:
                queries = tensors["queries"]
            elif len(tensors) == 1:
                queries = next(iter(tensors.values()))
            else:
                raise CheckpointError(
                    f"{path} holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:5])}); "
                    "name the query embeddings 'queries'"
                )
            queries = queries.float()
        else:
            raise CheckpointError(f"query file {path}: use a .npy or .safetensors file")
    except (OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"cannot read query embeddings from {path}: {exc}") from exc
    if queries.ndim == 1:
        queries = queries[None]
    if queries.ndim != 2 or queries.shape[0] == 0:
        raise CheckpointError(
            f"query embeddings in {path} are shaped {tuple(queries.shape)}; expected (Q, D)"
        )
    norms = torch.linalg.norm(queries, dim=-1, keepdim=True)
    if not bool(torch.isfinite(queries).all()) or bool((norms == 0).any()):
        raise CheckpointError(f"query embeddings in {path} hold NaN, inf or all-zero rows")
    return queries / norms


def _starts(length: int, window: int, overlap: int) -> list[int]:
    if length <= window:
        return [0]
    stride = max(1, window - overlap)
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def _window_size(detector: OwlViTDetector, options: DetectOptions) -> int:
    window = options.window or detector.config.vit.pretrain_size
    if window < detector.config.vit.patch:
        raise ValueError(
            f"--window {window} is smaller than the patch ({detector.config.vit.patch})"
        )
    return window


def detect_pixels(
    detector: OwlViTDetector,
    rgb: np.ndarray,
    queries: torch.Tensor,
    options: DetectOptions = DetectOptions(),
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detect in one image, window by window, merging the windows' boxes with NMS.

    Args:
        detector: The detector (on the device to run on).
        rgb: ``(3, H, W)`` uint8.
        queries: ``(Q, D)`` query embeddings.
        options: Window size, overlap, thresholds, batch size.
        valid: ``(H, W)`` bool, False where there is no imagery; boxes centred there are dropped.

    Returns:
        ``(N, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels, ``(N,)`` scores (decreasing) and
        ``(N,)`` query indices.
    """
    from torchvision.ops import batched_nms

    if rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 (3, H, W), got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[1:]
    window = _window_size(detector, options)
    origins = [
        (y, x)
        for y in _starts(height, window, options.overlap)
        for x in _starts(width, window, options.overlap)
    ]
    device = next(detector.parameters()).device
    image = torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(255.0)
    queries = queries.to(device)
    boxes, scores, labels = [], [], []
    for first in range(0, len(origins), options.batch_size):
        chunk = origins[first : first + options.batch_size]
        crops = torch.stack([image[:, y : y + window, x : x + window] for y, x in chunk])
        found = detector.detect(
            crops.to(device), queries, threshold=options.threshold, nms_iou=options.nms_iou
        )
        for (y, x), det in zip(chunk, found, strict=True):
            boxes.append(det.boxes + torch.tensor([x, y, x, y], dtype=det.boxes.dtype))
            scores.append(det.scores)
            labels.append(det.labels)
    all_boxes = torch.cat(boxes) if boxes else torch.zeros(0, 4)
    all_scores = torch.cat(scores) if scores else torch.zeros(0)
    all_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    if len(origins) > 1:
        keep = batched_nms(all_boxes, all_scores, all_labels, options.nms_iou)
        all_boxes, all_scores, all_labels = all_boxes[keep], all_scores[keep], all_labels[keep]
    out_boxes = all_boxes.numpy().astype(np.float64)
    out_scores = all_scores.numpy().astype(np.float64)
    out_labels = all_labels.numpy().astype(np.int64)
    if valid is not None and len(out_boxes):
        cx = np.clip(((out_boxes[:, 0] + out_boxes[:, 2]) / 2).astype(int), 0, width - 1)
        cy = np.clip(((out_boxes[:, 1] + out_boxes[:, 3]) / 2).astype(int), 0, height - 1)
        seen = valid[cy, cx]
        out_boxes, out_scores, out_labels = out_boxes[seen], out_scores[seen], out_labels[seen]
    order = np.argsort(-out_scores, kind="stable")
    return out_boxes[order], out_scores[order], out_labels[order]


def _pixel_boxes_to_crs(boxes: np.ndarray, transform: Any) -> np.ndarray:
    """``(N, 4)`` pixel boxes -> ``(N, 4)`` boxes ``(x0, y0, x1, y1)`` in the grid's CRS."""
    x0, y0 = transform @ (boxes[:, 0], boxes[:, 1])
    x1, y1 = transform @ (boxes[:, 2], boxes[:, 3])
    return np.stack(
        [np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)], axis=1
    )


def detect_tile(
    detector: OwlViTDetector,
    tile: grid.Tile,
    image: TileImage,
    queries: torch.Tensor,
    options: DetectOptions = DetectOptions(),
) -> gpd.GeoDataFrame:
    """Detect in one tile and keep the boxes whose centre lies in the tile's core.

    Args:
        detector: The detector.
        tile: The tile.
        image: Its pixels (from ``source.read(tile.grid)``).
        queries: ``(Q, D)`` query embeddings.
        options: How to run the detector.

    Returns:
        A GeoDataFrame in EPSG:4326 with columns ``score``, ``query``, ``tile`` and the box.
    """
    columns = {"score": [], "query": [], "tile": []}
    if image.empty:
        return gpd.GeoDataFrame(columns, geometry=[], crs="EPSG:4326")
    boxes, scores, labels = detect_pixels(detector, image.rgb, queries, options, image.valid)
    local = _pixel_boxes_to_crs(boxes, image.grid.transform)
    to_lonlat = Transformer.from_crs(image.grid.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform((local[:, 0] + local[:, 2]) / 2, (local[:, 1] + local[:, 3]) / 2)
    owned = tile.owns(np.asarray(lon), np.asarray(lat)) if len(local) else np.zeros(0, bool)
    geometry = gpd.GeoSeries(shapely.box(*local[owned].T), crs=image.grid.crs).to_crs(4326)
    return gpd.GeoDataFrame(
        {
            "score": scores[owned],
            "query": labels[owned],
            "tile": np.full(int(owned.sum()), tile.id, dtype=object),
        },
        geometry=geometry.values,
        crs="EPSG:4326",
    )


def detect_region(
    detector: OwlViTDetector,
    geometry: shapely.Geometry,
    source: ImagerySource,
    queries: torch.Tensor,
    *,
    spec: grid.GridSpec | None = None,
    options: DetectOptions = DetectOptions(),
    progress: bool = False,
) -> gpd.GeoDataFrame:
    """Detect over every tile whose core touches a region.

    Args:
        detector: The detector (in eval mode, on its device).
        geometry: The region in lon/lat.
        source: The imagery.
        queries: ``(Q, D)`` query embeddings.
        spec: The tiling grid (``ob-infer``'s default when None).
        options: How to run the detector.
        progress: Show a progress bar on stderr.

    Returns:
        The boxes of all tiles (see :func:`detect_tile`), best first.
    """
    from tqdm import tqdm

    spec = spec or grid.GridSpec()
    total = grid.count_tiles(geometry, spec)
    frames = []
    tiles = tqdm(
        grid.cover(geometry, spec), total=total, unit="tile", disable=not progress, file=sys.stderr
    )
    for tile in tiles:
        frames.append(detect_tile(detector, tile, source.read(tile.grid), queries, options))
    if not frames:
        return gpd.GeoDataFrame({"score": [], "query": [], "tile": []}, geometry=[], crs=4326)
    frame = gpd.GeoDataFrame(
        pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:4326"
    )
    return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def example_query(
    detector: OwlViTDetector,
    source: ImagerySource,
    example: tuple[float, float, float, float],
    *,
    spec: grid.GridSpec | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Turn the lon/lat box of one building in the imagery into a ``(1, D)`` query.

    The tile holding the box's centre is read, a window around the box is cut from it (the
    detector's pretraining size, or larger if the box is), and
    :meth:`~open_buildings.models.owlvit.OwlViTDetector.embed_example` picks the embedding.

    Args:
        detector: The detector.
        source: The imagery.
        example: ``(west, south, east, north)`` in degrees.
        spec: The tiling grid.
        window: Window side in pixels (None: the detector's pretraining size).

    Returns:
        The query embedding, ``(1, D)``.

    Raises:
        ImageryError: No imagery covers the example box.
        ValueError: The box is empty.
    """
    west, south, east, north = example
    if not (east > west and north > south):
        raise ValueError(f"--example {example}: give west,south,east,north with east > west")
    spec = spec or grid.GridSpec()
    tile = grid.tile_for_point((west + east) / 2, (south + north) / 2, spec)
    image = source.read(tile.grid)
    to_local = Transformer.from_crs("EPSG:4326", tile.grid.crs, always_xy=True)
    xs, ys = to_local.transform([west, east, east, west], [south, south, north, north])
    inverse = ~tile.grid.transform
    cols, rows = inverse @ (np.asarray(xs), np.asarray(ys))
    height, width = image.rgb.shape[1:]
    x0, x1 = float(np.clip(cols.min(), 0, width)), float(np.clip(cols.max(), 0, width))
    y0, y1 = float(np.clip(rows.min(), 0, height)), float(np.clip(rows.max(), 0, height))
    inside = image.valid[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
    if x1 <= x0 or y1 <= y0 or not inside.any():
        raise ImageryError(
            f"no imagery covers the example box {example}; pick a building inside the imagery"
        )
    side = max(window or detector.config.vit.pretrain_size, int(np.ceil(max(x1 - x0, y1 - y0))))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(np.clip(round(cx - side / 2), 0, max(0, width - side)))
    top = int(np.clip(round(cy - side / 2), 0, max(0, height - side)))
    crop = image.rgb[:, top : top + side, left : left + side]
    device = next(detector.parameters()).device
    pixels, (pad_h, pad_w) = detector.normalize(
        torch.from_numpy(np.ascontiguousarray(crop)).float().div_(255.0)[None].to(device)
    )
    box = torch.tensor(
        [(x0 - left) / pad_w, (y0 - top) / pad_h, (x1 - left) / pad_w, (y1 - top) / pad_h]
    )
    with torch.no_grad():
        chosen = detector.embed_example(pixels, box)
    return chosen.embedding[None].detach()


def evaluate_boxes(
    detections: gpd.GeoDataFrame, truth: Footprints, *, area: shapely.Geometry | None = None
) -> CocoResult:
    """Score detected boxes against building labels with COCO box AP.

    Each label becomes its bounding box, and each detection the bounding box of its geometry,
    both in one metric CRS (the labels' own if projected, else their UTM zone). The whole area is
    one image, so no cap on detections applies (as ``ob-eval`` does for regions).

    Args:
        detections: Boxes with a ``score`` column, in any CRS.
        truth: The labels (e.g. from :func:`open_buildings.evaluation.io.read_instances`).
        area: Only labels and detections whose centre lies in this lon/lat geometry count.

    Returns:
        AP, AP50, AP75 and AR.

    Raises:
        EvaluationError: The inputs have no CRS or the detections have no scores.
    """
    if detections.crs is None or truth.crs is None:
        raise EvaluationError("detections and labels need a CRS to be compared")
    if "score" not in detections:
        raise EvaluationError("the detections have no 'score' column")
    crs = metric_crs(truth)
    truth_m = to_crs(truth, crs)
    pred_m = detections.to_crs(crs)
    pred_geoms = np.asarray(pred_m.geometry.values, dtype=object)
    scores = pred_m["score"].to_numpy(dtype=np.float64)
    if area is not None:
        region = gpd.GeoSeries([area], crs=4326).to_crs(crs).iloc[0]
        keep_t = shapely.contains(region, shapely.centroid(truth_m.geometry))
        keep_p = shapely.contains(region, shapely.centroid(pred_geoms))
        truth_m = replace(truth_m, geometry=truth_m.geometry[keep_t])
        pred_geoms, scores = pred_geoms[keep_p], scores[keep_p]
    return box_map(
        geometry_boxes(pred_geoms), scores, geometry_boxes(truth_m.geometry), max_dets=None
    )


def _parse_example(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(
            f"--example takes four numbers west,south,east,north in degrees, got {text!r}"
        )
    return values  # type: ignore[return-value]


def detect_parser() -> argparse.ArgumentParser:
    """Return the ``ob-detect`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ob-detect",
        description="Detect buildings as boxes with an OWL-ViT checkpoint, queried by text "
        "embeddings or by one example building; write GeoJSON, and score it with box AP "
        "against labels. With no REGION it runs on the embedded Nairobi sample.",
    )
    parser.add_argument(
        "target",
        nargs="?",
        metavar="REGION|IMAGE",
        help="region GeoJSON (with --imagery), or a georeferenced image (GeoTIFF) to cover whole",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="CKPT",
        help="OWL-ViT checkpoint: the model.safetensors of a transformers "
        "OwlViTForObjectDetection, or its folder",
    )
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", metavar="FILE", help="query embeddings (.npy or .safetensors)")
    query.add_argument(
        "--example",
        type=_parse_example,
        metavar="W,S,E,N",
        help="lon/lat box of one building in the imagery (one-shot detection)",
    )
    parser.add_argument("--imagery", metavar="SRC", help="GeoTIFF/COG, folder, XYZ or STAC JSON")
    parser.add_argument("--out", default="detections.geojson", help="output GeoJSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--truth", metavar="LABELS", help="building labels to score box AP on")
    parser.add_argument("--threshold", type=float, default=0.1, help="score threshold (0.1)")
    parser.add_argument("--nms-iou", type=float, default=0.3, help="NMS IoU (0.3)")
    parser.add_argument("--window", type=int, help="window side in px (the model's image size)")
    parser.add_argument("--overlap", type=int, default=64, help="window overlap in px (64)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--tile-level", type=int, default=14, help=argparse.SUPPRESS)
    return parser


def detect_main(argv: Sequence[str] | None = None) -> int:
    """``ob-detect``: run the detector over a region or an image; write GeoJSON.

    Returns:
        The exit status: 0 on success, 2 when an input or the output is refused.
    """
    args = detect_parser().parse_args(argv)
    try:
        return _detect(args)
    except (OpenBuildingsError, ValueError, OSError) as exc:
        print(f"ob-detect: error: {exc}", file=sys.stderr)
        return 2


def _target(args: argparse.Namespace) -> tuple[shapely.Geometry, ImagerySource, str]:
    from open_buildings.geo.regions import read_region
    from open_buildings.resources import resource

    target = args.target
    if target and target.lower().endswith(IMAGE_SUFFIXES):
        if args.imagery:
            raise ValueError("give either an IMAGE or a REGION with --imagery, not both")
        source = open_imagery(target)
        return shapely.box(*source.bounds_lonlat()), source, target
    region_path = target or str(resource("geo", "sample", "region.geojson"))
    region = read_region(region_path)
    imagery = args.imagery or str(resource("geo", "sample", "items.json"))
    return region.geometry, open_imagery(imagery), region_path


def _detect(args: argparse.Namespace) -> int:
    from open_buildings.models.convert.owlvit import load_detector
    from open_buildings.pipelines.stages import resolve_device

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it, or another --out")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {out.parent} does not exist; create it first")
    truth = read_instances(args.truth, role="TRUTH") if args.truth else None
    geometry, source, where = _target(args)
    device = resolve_device(args.device)
    detector, report = load_detector(args.model)
    detector.to(device)
    options = DetectOptions(
        window=args.window,
        overlap=args.overlap,
        threshold=args.threshold,
        nms_iou=args.nms_iou,
        batch_size=args.batch_size,
    )
    spec = grid.GridSpec(level=args.tile_level)
    if args.query:
        queries = load_queries(args.query)
    else:
        queries = example_query(detector, source, args.example, spec=spec, window=args.window)
    print(
        f"ob-detect: {where}, model {args.model} ({report['loaded']} tensors, "
        f"{report['unused']} unused), {len(queries)} quer{'y' if len(queries) == 1 else 'ies'}",
        file=sys.stderr,
    )
    with torch.inference_mode():
        found = detect_region(
            detector,
            geometry,
            source,
            queries,
            spec=spec,
            options=options,
            progress=not args.no_progress,
        )
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(found.to_json(drop_id=True), encoding="utf-8")
    os.replace(tmp, out)
    print(f"boxes found: {len(found):,} -> {out}")
    if truth is not None:
        result = evaluate_boxes(found, truth, area=geometry)
        metrics = out.with_name(out.stem + ".metrics.json")
        metrics.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        print(
            f"box AP {fmt(result.ap)}, AP50 {fmt(result.ap50)}, AP75 {fmt(result.ap75)} "
            f"({result.n_pred} boxes, {result.n_truth} labels) -> {metrics}"
        )
    return 0
