"""The console commands (``ob-*``), one module each, and the one error wrapper they share.

A command parses its flags, calls library code, and prints. :func:`run_command` turns the
project's own errors (``OpenBuildingsError``: bad input, a refused output, a missing GPU) and
``OSError`` (a missing or unwritable file) into a one-line message and exit status 2. Anything
else is a bug: it stays a traceback, and Python exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from open_buildings.errors import OpenBuildingsError

A = TypeVar("A")

# Beam's local threads talk gRPC, whose core logs a harmless note on stderr whenever the process
# forks (GDAL, OpenVINO) during a call. It reads this when gRPC loads: before any command imports
# Beam. Errors still reach the user; a user's own setting wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

#: The exit status of a refused input or output.
EXIT_REFUSED = 2


#: Beam's harmless warnings on the root logger: GCP client libraries that local runs never use;
#: the ``-> DoOutputsTuple`` return hint of a multi-output transform, which it reads as a type
#: hint and ignores; and RunInference's memory metric, which reads the ``resource`` module.
_HARMLESS = (
    "apitools not found",
    "This output type hint will be ignored",
    "Resource module is not available",
)


class _QuietBeamImport(logging.Filter):
    """Drop Beam's warnings that say nothing to a user (:data:`_HARMLESS`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _HARMLESS)


logging.getLogger().addFilter(_QuietBeamImport())


def run_command(prog: str, body: Callable[[A], int], args: A) -> int:
    """Run a command's body; report the project's errors and ``OSError`` as exit status 2.

    Args:
        prog: the command's name, for the message (``"ob-infer"``).
        body: the command, given its parsed arguments; returns the exit status.
        args: the parsed arguments.

    Returns:
        ``body``'s status, or 2 after printing ``prog: error: message`` to stderr.
    """
    try:
        return body(args)
    except (OpenBuildingsError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def add_version(parser: argparse.ArgumentParser, *, default_model: bool = False) -> None:
    """Give a command ``--version``: the code's version and, for ob-infer, the default model's.

    Args:
        parser: the command's parser.
        default_model: also name the sha256 of the shipped default model (the one used when no
            ``--model`` is given).
    """
    from open_buildings import __version__

    text = f"{parser.prog} {__version__}"
    if default_model:
        from open_buildings.resources import resource

        sidecar = resource("models", "default", "weights.safetensors.sha256")
        digest = sidecar.read_text().split()[0] if sidecar.is_file() else "not installed"
        text += f" (default model sha256 {digest})"
    parser.add_argument("--version", action="version", version=text)


def require_train_extra(prog: str) -> None:
    """Refuse a command that needs PyTorch on the light install, saying what to install.

    Args:
        prog: the command's name, for the message.

    Raises:
        MissingExtraError: torch is not installed.
    """
    from open_buildings.errors import MissingExtraError
    from open_buildings.pipelines.torch_runtime import torch_available

    if not torch_available():
        raise MissingExtraError(
            f"{prog} needs PyTorch, which this install leaves out (the light install runs "
            "ob-infer, ob-eval, ob-eval-model, ob-download, ob-map and ob-tiles): pip install "
            "'open-buildings-pipeline[train]'"
        )
