"""ob-infer with an earlier commit's code against this tree: ``python -m bench.before_after REV``.

The earlier code is checked out with ``git worktree`` into a temporary folder and imported
through ``PYTHONPATH`` by the same interpreter and virtual environment, so only the code differs.
Both run ``ob-infer`` (default model) on the sample and, unless ``--quick``, on 1 km² of the dense
mirrored imagery (``bench.imagery``), alternating ``--repeats`` times. For each run: wall and CPU
seconds, and whether the footprint CSV is byte-identical to the other side's.

Example: ``python -m bench.before_after e04595b`` (the tree before issue #8's speed changes).
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, SAMPLE, worktree
from bench.imagery import mirrored_imagery, sample_center, square_region

# ob-infer's entry point moved from open_buildings.cli to open_buildings.commands.infer.
_RUN = (
    "import sys\n"
    "try:\n    from open_buildings.commands.infer import main\n"
    "except ImportError:\n    from open_buildings.cli import infer_main as main\n"
    "code = main(sys.argv[1:])\n"
    # bench.common.peak_rss_mib, inline: the child imports an earlier tree, whose bench differs
    "hwm = next(x for x in open('/proc/self/status') if x.startswith('VmHWM')).split()[1]\n"
    "print('PEAK_KIB', hwm, file=sys.stderr)\n"
    "sys.exit(code)"
)


def run_tree(tree: Path, region: Path, imagery: Path, out: Path) -> dict[str, float | str]:
    """Run ob-infer from the code in ``tree``; return its wall and CPU seconds, its peak RSS
    (``rss_mib``) and the CSV's md5."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cmd = [sys.executable, "-c", _RUN, str(region), "--imagery", str(imagery)]
    cmd += ["--out", str(out), "--no-progress"]
    env = {**_env(), "PYTHONPATH": str(tree)}
    probe = [sys.executable, "-c", "import open_buildings; print(open_buildings.__file__)"]
    where = subprocess.run(probe, capture_output=True, text=True, env=env, cwd=out.parent)
    if not where.stdout.strip().startswith(str(tree)):
        raise RuntimeError(f"ob-infer would import {where.stdout.strip()}, not {tree}")
    # cwd: not the repository, whose folder would come first on sys.path for ``python -c``
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"ob-infer from {tree} failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    (csv,) = sorted(out.glob("*.csv.gz"))
    peak = next(x for x in done.stderr.splitlines() if x.startswith("PEAK_KIB "))
    return {
        "wall": wall,
        "cpu": cpu,
        "rss_mib": int(peak.split()[1]) / 1024,
        "md5": hashlib.md5(csv.read_bytes()).hexdigest(),
    }


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def main(argv: list[str] | None = None) -> None:
    """Print before/after for each input."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the earlier commit")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="the sample only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with worktree(args.rev, folder / "before") as before:
            inputs = {"sample": (SAMPLE / "region.geojson", SAMPLE / "items.json")}
            if not args.quick:
                lon, lat = sample_center()
                region = square_region(lon, lat, 1, folder / "r1.geojson")
                inputs["dense 1 km2"] = (region, mirrored_imagery(folder / "m.tif", 2.6))
            for name, (region, imagery) in inputs.items():
                for k in range(args.repeats):
                    got = {}
                    for side, tree in (("before", before), ("after", ROOT)):
                        got[side] = run_tree(tree, region, imagery, folder / f"{side}{name}{k}")
                    b, a = got["before"], got["after"]
                    print(
                        f"{name}: before {b['wall']:.1f} s wall, {b['cpu']:.1f} s cpu; after "
                        f"{a['wall']:.1f} s, {a['cpu']:.1f} s cpu: {b['wall'] / a['wall']:.2f}x "
                        f"wall, {b['cpu'] / a['cpu']:.2f}x cpu; CSV identical: "
                        f"{b['md5'] == a['md5']}"
                    )


if __name__ == "__main__":
    main()
