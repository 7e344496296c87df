"""Evaluation: COCO instance mAP, SpaceNet F1, precision thresholds, reports (``ob-eval``).

- ``matching``: sparse IoU (polygons via an STRtree, instance rasters via bincount) and greedy
  one-to-one matching.
- ``coco``: AP@[.50:.95], AP50, AP75, AR as pycocotools computes them (maxDets 100, area "all").
- ``spacenet``: SpaceNet F1 per image and overall; SpaceNet CSV reading.
- ``thresholds``: the PR curve over confidence and the thresholds for 80/85/90% precision.
- ``io``: PRED/TRUTH from footprint folders, GeoJSON or SpaceNet CSV, in one metric CRS.
- ``evaluate``: all of the above for one PRED/TRUTH pair; ``report``: files and summary;
  ``command``: the ``ob-eval`` command line.
"""
