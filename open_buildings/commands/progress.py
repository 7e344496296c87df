"""A progress bar for a local Beam run, fed by the per-tile files its workers finish."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path


class TileProgress:
    """A tqdm bar fed by counting finished per-tile files while the pipeline runs.

    Args:
        work_dir: the run's work folder (``transforms.WorkDir.path``).
        total: the number of tiles.
        enabled: draw the bar (False counts silently).
    """

    def __init__(self, work_dir: Path, total: int, enabled: bool) -> None:
        self._dirs = [work_dir / "tiles", work_dir / "failed"]
        self._total = total
        self._enabled = enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _done(self) -> int:
        return sum(len(os.listdir(d)) for d in self._dirs if d.is_dir())

    def _loop(self) -> None:
        from tqdm import tqdm

        with tqdm(
            total=self._total, unit="tile", desc="tiles", disable=not self._enabled, file=sys.stderr
        ) as bar:
            while True:
                stopping = self._stop.wait(0.5)
                done = min(self._done(), self._total)
                bar.update(done - bar.n)
                if stopping:
                    break

    def __enter__(self) -> TileProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
