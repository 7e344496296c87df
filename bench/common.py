"""What every benchmark shares: timing in wall and CPU seconds, and the machine's description.

The machine these figures come from is shared: other processes take cores at random moments. Wall
time then measures the neighbours as much as the code, while the CPU time a process spends (user +
system, all its threads) barely moves. Each measurement therefore records both, takes the best of
its repeats, and ratios are taken between figures measured in the same run.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "geo" / "sample"
LABELS = ROOT / "tests" / "data" / "labels" / "nairobi_ke.geojson"
DEFAULT_WEIGHTS = ROOT / "models" / "default" / "weights.safetensors"
#: Threads every in-process measurement uses (the sandbox has 2 cores).
THREADS = 2


@dataclass(frozen=True)
class Timing:
    """The best of several runs.

    Attributes:
        wall: wall-clock seconds.
        cpu: CPU seconds of this process (user + system, all threads).
    """

    wall: float
    cpu: float


def cpu_seconds() -> float:
    """Return this process's CPU seconds so far (user + system, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], object], runs: int = 3, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``runs`` times; return the best wall and CPU."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(max(1, runs)):
        c0, w0 = cpu_seconds(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(cpu_seconds() - c0)
    return Timing(min(walls), min(cpus))


def interleaved(
    fns: dict[str, Callable[[], object]], runs: int = 3, warmup: int = 1
) -> dict[str, Timing]:
    """Time several functions round-robin (so a busy moment hits them alike); best of ``runs``.

    Args:
        fns: name -> function to time.
        runs: timed rounds; each round runs every function once.
        warmup: untimed calls of each function first.

    Returns:
        name -> the best wall and the best CPU seconds.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, runs)):
        for name, fn in fns.items():
            c0, w0 = cpu_seconds(), time.perf_counter()
            fn()
            walls[name].append(time.perf_counter() - w0)
            cpus[name].append(cpu_seconds() - c0)
    return {name: Timing(min(walls[name]), min(cpus[name])) for name in fns}


def cpu_flags() -> set[str]:
    """Return the CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def machine() -> str:
    """One line describing this machine: CPU, cores, SIMD, load, library versions."""
    import torch

    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.machine()} {model or platform.processor()}, {os.cpu_count()} cores, "
        f"SIMD: {' '.join(simd) or 'none detected'}; load average {load}; "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    ``VmHWM``, not ``ru_maxrss``: a child's ``ru_maxrss`` keeps the high-water mark of the parent
    it was forked from, across exec, so a bench's children would report the bench's own memory.
    """
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def load_average() -> float:
    """Return the 1-minute load average (how many cores others were using, roughly)."""
    return os.getloadavg()[0]


@contextmanager
def worktree(rev: str, path: Path) -> Iterator[Path]:
    """Check out ``rev`` of this repository at ``path`` (``git worktree``), removed afterwards."""
    git = ["git", "-C", str(ROOT), "worktree"]
    subprocess.run([*git, "add", "--detach", "-f", str(path), rev], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run([*git, "remove", "--force", str(path)], check=False, capture_output=True)
