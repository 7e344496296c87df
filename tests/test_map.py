"""``ob-map`` and ``ob-infer --map``: the page renders in a real browser (headless Chromium).

.ci/run installs Debian's chromium and sets OB_REQUIRE_BROWSER=1, so there a missing browser
fails the tests instead of skipping them.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from open_buildings.commands import infer as ob_infer
from open_buildings.commands import map as ob_map
from open_buildings.geo.shard_read import read_footprints

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    BROWSER is None and os.environ.get("OB_REQUIRE_BROWSER") != "1",
    reason="headless Chromium is not installed here (apt-get install chromium; .ci/run does)",
)


def _chromium(page: Path, *flags: str) -> subprocess.CompletedProcess[bytes]:
    assert BROWSER, "OB_REQUIRE_BROWSER=1 but chromium is not installed"
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=900,700",
        "--virtual-time-budget=5000",
        *flags,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, timeout=120, check=True)


def _drawn(page: Path, css_class: str) -> int:
    dom = _chromium(page, "--dump-dom").stdout.decode()
    return len(re.findall(rf'<path[^>]*class="[^"]*\b{css_class}\b', dom))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ob-infer --map`` on the embedded sample with the default model."""
    out = tmp_path_factory.mktemp("map") / "out"
    assert ob_infer.main(["--out", str(out), "--no-progress", "--map"]) == 0
    return out


def test_ob_infer_map_writes_one_self_contained_page(run: Path) -> None:
    page = run / "map.html"
    text = page.read_text(encoding="utf-8")
    assert "L.map(" in text and "BSD-2-Clause" in text  # Leaflet inlined, its licence named
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text)  # nothing fetched
    assert "data:image/png;base64," in text  # the imagery overlay
    assert '"region":{"type":"Polygon"' in text  # the manifest's region, outlined
    assert f"{len(read_footprints(run))} buildings, coloured by confidence" in text


@needs_browser
def test_the_page_draws_every_building_over_the_imagery(run: Path, tmp_path: Path) -> None:
    page = run / "map.html"
    buildings = len(read_footprints(run))
    assert buildings > 20
    assert _drawn(page, "ob-building") == buildings
    assert _drawn(page, "ob-region") == 1
    shot = tmp_path / "map.png"
    _chromium(page, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")).astype(int)
    background = np.array([221, 221, 221])  # Leaflet's container grey: nothing drawn there
    drawn = np.abs(pixels - background).sum(axis=-1) > 30
    assert drawn.mean() > 0.2, f"only {drawn.mean():.1%} of the page shows imagery or buildings"
    # the buildings' colours (the viridis ramp) are on screen, not only the imagery
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 190) & (pixels[..., 2] < 120)
    assert yellow.sum() > 200


@needs_browser
def test_a_large_output_is_drawn_as_counts_per_square(run: Path, tmp_path: Path) -> None:
    page = tmp_path / "squares.html"
    assert ob_map.main([str(run), "--max-features", "40", "--no-imagery", "-o", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert "more than 40, so drawn as the number of buildings in squares" in text
    squares = _drawn(page, "ob-square")
    assert 1 <= squares < len(read_footprints(run))
    assert _drawn(page, "ob-building") == 0


@needs_browser
def test_ob_map_reads_a_flatgeobuf_and_names_an_unreadable_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    frame = read_footprints(run)
    fgb = tmp_path / "buildings.fgb"
    frame.to_file(fgb, driver="FlatGeobuf", engine="pyogrio")
    assert ob_map.main([str(fgb), "--no-imagery"]) == 0
    assert _drawn(tmp_path / "buildings.map.html", "ob-building") == len(frame)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert ob_map.main([str(other)]) == 2
    assert "ob-map reads an ob-infer folder" in capsys.readouterr().err
