"""ob-infer killed by SIGKILL at several points resumes to byte-identical shards and manifest.

The kill comes from ``OPEN_BUILDINGS_KILL_AT`` (``pipelines/faults.py``): no ``finally`` runs,
as when a machine is pre-empted. Each run is a real ``ob-infer`` process on the embedded sample
with an untrained tiny model (the plumbing, not the quality).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from damage import tiny_model  # noqa: F401 - tiny_model: a fixture

from open_buildings.pipelines.faults import ENV

ROOT = Path(__file__).resolve().parents[2]
_MAIN = "import sys; from open_buildings.commands.infer import main; sys.exit(main(sys.argv[1:]))"
REGION_BOX = (36.9070, -1.3058, 36.9078, -1.3049)  # a few level-16 tiles of the sample


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict:
    from open_buildings.commands.evaluate_model import write_bbox_region

    folder = tmp_path_factory.mktemp("kill")
    model = tiny_model
    region = folder / "region.geojson"
    write_bbox_region(REGION_BOX, region)
    env = {**os.environ, "OPEN_BUILDINGS_CACHE": str(folder / "cache")}
    env.pop(ENV, None)
    setup = {"folder": folder, "model": model, "region": region, "env": env}
    clean = folder / "clean"
    assert _run(setup, clean).returncode == 0
    setup["clean"] = _snapshot(clean)
    return setup


def _run(setup: dict, out: Path, *extra: str, kill_at: str | None = None):
    cmd = [sys.executable, "-c", _MAIN, str(setup["region"]),
           "--model", str(setup["model"]), "--out", str(out), "--tile-level", "16",
           "--no-progress", "--format", "csv,parquet", *extra]  # fmt: skip
    env = dict(setup["env"])
    if kill_at:
        env[ENV] = kill_at
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _snapshot(out: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    manifest.pop("created_utc")
    files["manifest.json (without created_utc)"] = json.dumps(manifest, sort_keys=True).encode()
    return files


@pytest.mark.parametrize(
    "kill_at",
    [
        pytest.param("partial:1", marks=pytest.mark.slow),  # the first tile's result kept
        "partial:3",  # in the middle of the tiles
        "shard:1",  # after the CSV shard, before its Parquet twin
        pytest.param("manifest:1", marks=pytest.mark.slow),  # shards written, no manifest
    ],
)
def test_a_killed_run_resumes_to_identical_files(setup: dict, kill_at: str) -> None:
    out = setup["folder"] / f"killed-{kill_at.replace(':', '-')}"
    killed = _run(setup, out, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "manifest.json").exists()  # the manifest marks a finished run
    resumed = _run(setup, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _snapshot(out) == setup["clean"]
