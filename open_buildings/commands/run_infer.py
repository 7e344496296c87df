"""``ob-infer`` run by another command (``ob-eval-model``, ``ob-change``), its failure raised."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Sequence

from open_buildings.commands import infer
from open_buildings.errors import InferenceError


def run_or_raise(argv: Sequence[str], failure: str, *, quiet: bool = False) -> None:
    """Run ``ob-infer`` with ``argv``.

    Args:
        argv: ob-infer's arguments.
        failure: the message of the error raised when ob-infer does not exit 0.
        quiet: keep ob-infer's output off the terminal unless it fails.

    Raises:
        InferenceError: ob-infer failed (its own message is printed first).
    """
    said = io.StringIO()
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(contextlib.redirect_stdout(said))
            stack.enter_context(contextlib.redirect_stderr(said))
        status = infer.main(argv)
    if status != 0:
        print(said.getvalue(), file=sys.stderr, end="")
        raise InferenceError(failure)
