"""``ob-models``: the registered models, and ``ob-models export-onnx`` for a checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from open_buildings.commands import add_version, require_train_extra, run_command


def main(argv: Sequence[str] | None = None) -> int:
    """List the model registry, or export a checkpoint to ONNX; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="ob-models",
        description="List the registered models with their parameter counts (no subcommand), "
        "or export a checkpoint to ONNX.",
    )
    add_version(parser)
    sub = parser.add_subparsers(dest="command", metavar="{export-onnx}")
    export = sub.add_parser(
        "export-onnx",
        help="write CHECKPOINT's ONNX export beside it (<stem>.onnx and its .sha256), checked "
        "against PyTorch; ob-infer then runs it on a CPU without PyTorch",
    )
    export.add_argument("checkpoint", help="a .safetensors checkpoint, or a model folder")
    return run_command("ob-models", _models, parser.parse_args(argv))


def _models(args: argparse.Namespace) -> int:
    require_train_extra("ob-models")
    if args.command == "export-onnx":
        return _export(args.checkpoint)
    from open_buildings.models.registry import format_models_table

    print(format_models_table())
    return 0


def _export(spec: str) -> int:
    from open_buildings.pipelines.onnx_backend import export_beside
    from open_buildings.pipelines.runtime import resolve_model

    path = export_beside(resolve_model(spec).path)
    print(f"wrote {path} and {path.name}.sha256 (checked against PyTorch)")
    return 0
