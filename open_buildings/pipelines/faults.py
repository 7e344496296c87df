"""Fault injection: kill this process at a named point of a run, for the resume tests.

``OPEN_BUILDINGS_KILL_AT=point:n`` (e.g. ``partial:3``) sends SIGKILL to the process the n-th
time :func:`point` is reached with that name in it: no ``finally``, no atexit, exactly as a
pre-empted worker or a power cut would end it. Unset (always, outside the tests), it costs one
dictionary lookup. The points: ``partial`` (a tile's result kept), ``shard`` (one shard file
written) and ``manifest`` (just before the manifest, the run's last write).
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "point"]

ENV = "OPEN_BUILDINGS_KILL_AT"
_seen: dict[str, int] = {}


def point(name: str) -> None:
    """Count a pass through ``name``; SIGKILL the process when :data:`ENV` says so."""
    target = os.environ.get(ENV)
    if not target:
        return
    where, _, count = target.partition(":")
    if where != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
