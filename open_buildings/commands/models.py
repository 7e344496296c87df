"""``ob-models``: the registered models with their parameter counts and output channels."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from open_buildings.commands import add_version, run_command


def main(argv: Sequence[str] | None = None) -> int:
    """Print the model registry as a table; return the exit status (0)."""
    parser = argparse.ArgumentParser(
        prog="ob-models", description="List the registered models with their parameter counts."
    )
    add_version(parser)
    return run_command("ob-models", _models, parser.parse_args(argv))


def _models(args: argparse.Namespace) -> int:
    from open_buildings.models.registry import format_models_table

    print(format_models_table())
    return 0
