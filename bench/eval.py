"""ob-eval's core on 10,000 footprints: ``python -m bench.eval``.

The footprints are the 180 real OSM buildings of the Nairobi sample, translated across a grid of
copies (about 10,000 truth polygons). The predictions are the same polygons, jittered by up to a
metre and scaled a little, with random confidences, and 5% of them dropped and replaced by
shifted false positives. The figure is footprints (truth + predictions) scored per second by
``evaluate`` (IoU, COCO mAP, SpaceNet F1, PR curve and thresholds), excluding file reading.
"""

from __future__ import annotations

import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from shapely import affinity

from open_buildings.evaluation.evaluate import evaluate
from open_buildings.evaluation.io import Footprints, metric_crs, to_crs

LABELS = Path(__file__).resolve().parents[1] / "tests/data/labels/nairobi_ke.geojson"


def footprints(n: int = 10_000, seed: int = 0) -> tuple[Footprints, Footprints]:
    """Return (pred, truth) with about ``n`` truth polygons each, in metres (UTM)."""
    rng = np.random.default_rng(seed)
    labels = gpd.read_file(LABELS)
    base = Footprints(
        np.asarray(labels.geometry.values, dtype=object),
        None,
        None,
        labels.crs,
        "nairobi",
        np.array([str(i) for i in range(len(labels))], dtype=object),
    )
    base = to_crs(base, metric_crs(base))
    w, s, e, nn = shapely.total_bounds(base.geometry)
    step = max(e - w, nn - s) + 50.0
    copies = int(np.ceil(n / len(base)))
    side = int(np.ceil(np.sqrt(copies)))
    truth = []
    for k in range(copies):
        dx, dy = (k % side) * step, (k // side) * step
        truth.extend(shapely.transform(base.geometry, lambda c, dx=dx, dy=dy: c + [dx, dy]))
    truth = np.array(truth[:n], dtype=object)
    pred = []
    for g in truth:
        if rng.random() < 0.05:  # a false positive, not on any building
            pred.append(affinity.translate(g, 0, 30.0))
            continue
        jitter = affinity.translate(g, *rng.uniform(-1, 1, 2))
        pred.append(affinity.scale(jitter, *rng.uniform(0.9, 1.1, 2)))
    pred = np.array(pred, dtype=object)
    names = np.array([str(i) for i in range(n)], dtype=object)
    return (
        Footprints(pred, rng.random(n), None, base.crs, "pred", names),
        Footprints(truth, None, None, base.crs, "truth", names),
    )


def run(n: int = 10_000) -> dict[str, float]:
    """Time ``evaluate`` on ``n`` truth and ``n`` predicted footprints."""
    pred, truth = footprints(n)
    start = time.perf_counter()
    ev = evaluate(pred, truth, crs_name="bench")
    seconds = time.perf_counter() - start
    return {
        "truth": len(truth),
        "pred": len(pred),
        "seconds": seconds,
        "footprints_per_s": (len(truth) + len(pred)) / seconds,
        "f1": ev.f1.total.f1,
        "ap": ev.coco.ap or 0.0,
    }


def main() -> None:
    """Print the measurement."""
    r = run()
    print(
        f"ob-eval core: {r['truth']:,} truth + {r['pred']:,} predicted footprints in "
        f"{r['seconds']:.2f} s = {r['footprints_per_s']:,.0f} footprints/s "
        f"(F1 {r['f1']:.3f}, AP {r['ap']:.3f})"
    )


if __name__ == "__main__":
    main()
