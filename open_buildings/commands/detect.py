"""``ob-detect REGION|IMAGE``: OWL-ViT building boxes as GeoJSON, and their box AP.

The detector (:class:`~open_buildings.models.owlvit_detector.OwlViTDetector`, loaded from a
published OWL-ViT checkpoint by :func:`~open_buildings.models.convert.owlvit.load_detector`) runs
as a local Beam job over the same 50 cm tiles as ``ob-infer``
(:mod:`open_buildings.pipelines.detect`), with the same progress bar, ``--resume`` and dead
letters: a tile that cannot be read is listed in ``<out>.dead_letter.jsonl`` and the rest
completes.


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
  one-shot detection, :meth:`~open_buildings.models.owlvit_detector.OwlViTDetector.embed_example`).

With ``--truth LABELS`` the boxes are scored against building labels with COCO box AP
(:func:`open_buildings.evaluation.boxes.evaluate_boxes`), over the labels and boxes whose centre
lies in the region.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from open_buildings.commands import add_version, require_train_extra, run_command
from open_buildings.commands.progress import TileProgress
from open_buildings.errors import ConfigError, InferenceError, OutputExistsError
from open_buildings.geo import grid
from open_buildings.geo.imagery import ImagerySource, open_imagery

#: Files taken as an image (the region is then the image's footprint) rather than a region.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp")


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
    add_version(parser)
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
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    mode.add_argument("--resume", action="store_true", help="continue an interrupted run")
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


def main(argv: Sequence[str] | None = None) -> int:
    """``ob-detect``: run the detector over a region or an image; write GeoJSON.

    Returns:
        The exit status: 0 on success (even if some tiles went to the dead-letter list), 2 when
        an input or the output is refused, 1 when the run itself failed.
    """
    return run_command("ob-detect", _detect, detect_parser().parse_args(argv))


def _target(args: argparse.Namespace) -> tuple[shapely.Geometry, ImagerySource, str, str]:
    from open_buildings.geo.regions import read_region
    from open_buildings.pipelines.job import sample_imagery, sample_region

    target = args.target
    if target and target.lower().endswith(IMAGE_SUFFIXES):
        if args.imagery:
            raise ConfigError("give either an IMAGE or a REGION with --imagery, not both")
        source = open_imagery(target)
        return shapely.box(*source.bounds_lonlat()), source, target, target
    region_path = target or sample_region()
    region = read_region(region_path)
    imagery = args.imagery or sample_imagery()
    return region.geometry, open_imagery(imagery), imagery, region_path


def _prepare(out: Path, work: Path, args: argparse.Namespace) -> None:
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {out.parent} does not exist; create it first")
    if args.resume and not work.is_dir():
        raise InferenceError(f"--resume: no unfinished run for {out} ({work} is missing)")
    if out.exists() and not (args.overwrite or args.resume):
        raise OutputExistsError(
            f"{out} exists; pass --overwrite to replace it, --resume to continue the run that "
            "wrote it, or another --out"
        )
    if work.is_dir() and not (args.overwrite or args.resume):
        raise OutputExistsError(
            f"an unfinished run for {out} is in {work}; pass --resume to continue it, "
            "--overwrite to start again, or another --out"
        )
    if work.is_dir() and args.overwrite:
        shutil.rmtree(work)


def _detect(args: argparse.Namespace) -> int:
    require_train_extra("ob-detect")
    from open_buildings.evaluation.boxes import evaluate_boxes
    from open_buildings.evaluation.io import read_instances
    from open_buildings.models.convert.owlvit import load_detector, load_queries
    from open_buildings.models.owlvit_windows import DetectOptions, window_size
    from open_buildings.pipelines import detect, sinks
    from open_buildings.pipelines.job import local_pipeline
    from open_buildings.pipelines.runtime import resolve_device
    from open_buildings.pipelines.transforms import WorkDir

    out = Path(args.out)
    work = out.with_name(f".{out.name}.work")
    _prepare(out, work, args)
    truth = read_instances(args.truth, role="TRUTH") if args.truth else None
    geometry, source, imagery, where = _target(args)
    device = resolve_device(args.device)
    detector, report = load_detector(args.model)
    detector.to(device).eval()
    options = DetectOptions(
        window=args.window,
        overlap=args.overlap,
        threshold=args.threshold,
        nms_iou=args.nms_iou,
        batch_size=args.batch_size,
    )
    window_size(detector, options)  # refuse a bad --window before anything runs
    try:
        spec = grid.GridSpec(level=args.tile_level)
    except ValueError as exc:
        raise ConfigError(f"--tile-level: {exc}") from None
    if args.query:
        queries = load_queries(args.query)
    else:
        queries = detect.example_query(
            detector, source, args.example, spec=spec, window=args.window
        )
    total = grid.count_tiles(geometry, spec)
    print(
        f"ob-detect: {where}, {total:,} tiles, model {args.model} ({report['loaded']} tensors, "
        f"{report['unused']} unused), {len(queries)} quer{'y' if len(queries) == 1 else 'ies'}",
        file=sys.stderr,
    )
    p = local_pipeline()
    detect.build_detection(
        p,
        geometry,
        imagery=imagery,
        model=args.model,
        queries=queries.cpu().numpy(),
        out=str(out),
        spec=spec,
        options=options,
        device=args.device,
        work=WorkDir(str(work), args.resume),
    )
    try:
        with TileProgress(work, total, enabled=not args.no_progress):
            p.run().wait_until_finish()
    except Exception as exc:  # noqa: BLE001 - any worker error ends the run; say how to go on
        print(
            f"ob-detect: the run failed ({type(exc).__name__}: {str(exc).strip()[:2000]}). "
            f"Finished tiles are kept in {work}; rerun with --resume --out {out} to continue",
            file=sys.stderr,
        )
        return 1
    shutil.rmtree(work, ignore_errors=True)
    found = gpd.read_file(out)
    dead = sinks.load_dead_letters(detect.dead_letter_path(out))
    print(f"boxes found: {len(found):,} -> {out}")
    where_dead = f" (see {detect.dead_letter_path(out)})" if dead else ""
    print(f"dead letters: {len(dead)} tile(s) failed{where_dead}")
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
