"""``ob-models``: the registered models, ``ob-models export-onnx`` for a checkpoint,
``ob-models quantize-int8`` (its int8 export, calibrated on the user's imagery) and
``ob-models soup`` (fine-tunes of one model averaged into one, calibrated)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from open_buildings.commands import add_version, require_train_extra, run_command
from open_buildings.errors import OutputExistsError


def main(argv: Sequence[str] | None = None) -> int:
    """List the model registry, or export a checkpoint to ONNX; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="ob-models",
        description="List the registered models with their parameter counts (no subcommand), "
        "export a checkpoint to ONNX or int8, or average fine-tunes of one into a soup.",
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", metavar="{export-onnx,quantize-int8,soup}")
    export = sub.add_parser(
        "export-onnx",
        help="write CHECKPOINT's ONNX export beside it (<stem>.onnx and its .sha256), checked "
        "against PyTorch; ob-infer then runs it on a CPU without PyTorch",
    )
    export.add_argument("checkpoint", help="a .safetensors checkpoint, or a model folder")
    quant = sub.add_parser(
        "quantize-int8",
        help="write CHECKPOINT's int8 export beside it (<stem>.int8.onnx), calibrated on tiles of "
        "your imagery; ob-infer --backend onnxruntime-int8 runs it",
    )
    quant.add_argument("checkpoint", help="a checkpoint with its fp32 export, or a model folder")
    quant.add_argument(
        "--imagery", action="append", required=True, metavar="SRC",
        help="imagery to calibrate on, as ob-infer takes it (repeat for several sources)",
    )  # fmt: skip
    quant.add_argument("--windows", type=int, default=48, help="calibration windows (48)")
    quant.add_argument("--window", type=int, default=256, help="their side in pixels (256)")
    quant.add_argument(
        "--skip-tile", action="append", default=[], metavar="TOKEN",
        help="a tile not to calibrate on (e.g. one you validate on); repeatable",
    )  # fmt: skip
    soup = sub.add_parser(
        "soup",
        help="average the weights of fine-tunes of one checkpoint (a uniform model soup) and "
        "calibrate the result on CONFIG's validation areas, as ob-train does at a run's end",
    )
    soup.add_argument("config", help="the ob-train config the members were fine-tuned with")
    soup.add_argument("members", nargs="+", metavar="CHECKPOINT", help="two or more fine-tunes")
    soup.add_argument("--out", required=True, metavar="FILE", help="the soup's .safetensors")
    soup.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, as ob-train takes it",
    )  # fmt: skip
    return run_command("ob-models", _models, parser.parse_args(argv))


def _models(args: argparse.Namespace) -> int:
    require_train_extra("ob-models")
    if args.command == "export-onnx":
        return _export(args.checkpoint)
    if args.command == "quantize-int8":
        return _quantize(args)
    if args.command == "soup":
        return _soup(args)
    from open_buildings.models.registry import format_models_table

    print(format_models_table())
    return 0


def _export(spec: str) -> int:
    from open_buildings.pipelines.onnx_backend import export_beside
    from open_buildings.pipelines.runtime import resolve_model

    path = export_beside(resolve_model(spec).path)
    print(f"wrote {path} and {path.name}.sha256 (checked against PyTorch)")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from open_buildings.pipelines.onnx_int8 import calibration_windows, quantize_beside
    from open_buildings.pipelines.runtime import resolve_model

    windows = calibration_windows(
        args.imagery, args.windows, skip=args.skip_tile, window=args.window
    )
    path = quantize_beside(resolve_model(args.checkpoint).path, windows)
    print(f"wrote {path} and {path.name}.sha256, calibrated on {len(windows)} windows; run it with "
          "ob-infer --backend onnxruntime-int8")  # fmt: skip
    return 0


def _soup(args: argparse.Namespace) -> int:
    from open_buildings.config import load_config
    from open_buildings.geo.footprints import atomic_write
    from open_buildings.training.config import TrainConfig
    from open_buildings.training.soup import make_soup

    out = Path(args.out)
    if out.exists():
        raise OutputExistsError(f"{out} exists; choose another --out")
    cfg = load_config(TrainConfig, args.config, args.override)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = make_soup(cfg, args.members, out)
    with atomic_write(out.parent / f"{out.stem}.soup.json", overwrite=True, mode="w") as handle:
        json.dump(result, handle, indent=1)
    val, best = result["val"], result["operating_points"]["best_f1"]
    print(f"wrote {out} (sha256 {result['sha256']}), the mean of {len(args.members)} "
          f"checkpoints: validation AP50 {val['ap50']:.3f}, best F1 {best['f1']:.3f} at "
          f"confidence >= {best['threshold']:.3f} (ob-infer's default); members and figures "
          f"in {out.stem}.soup.json")  # fmt: skip
    return 0
