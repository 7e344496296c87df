"""SpaceNet building F1: one-to-one matching at IoU 0.5, per image and overall; SpaceNet CSVs.

The rules are those of the SpaceNet scorers, read from their source:

- solaris ``Evaluator.eval_iou_spacenet_csv`` / ``eval_iou`` (CosmiQ/solaris ``eval/base.py``,
  the scorer behind the SpaceNet 2-7 building challenges) and SpaceNet's first scorer
  (SpaceNetChallenge/utilities ``spaceNetUtilities/evalTools.py``).
- Proposals are visited in order of decreasing ``Confidence`` (solaris sorts on it; here the sort
  is stable, so equal confidences keep file order). Each proposal takes the still-unmatched truth
  polygon with which its IoU is highest (the first one on a tie, like pandas' ``idxmax``) and is a
  true positive if that IoU reaches the threshold; otherwise it is a false positive. The truth
  polygons left unmatched are false negatives.
- Threshold: SpaceNet's utilities scorer and this module count ``IoU >= 0.5``; solaris counts
  ``IoU > 0.5`` (``strict=True`` here). The two differ only for an IoU of exactly 0.5; no pair
  in the published fixtures has one, so both give the published figures there.
- ``min_area`` (SpaceNet 2 used 20 px): truth polygons with area ``< min_area`` and proposals
  with area ``<= min_area`` are dropped before matching; proposals with zero area never count
  and neither do truth polygons with zero area (the ``POLYGON EMPTY`` rows that mark an image with
  no buildings).
- Precision is 0 when there are no proposals, recall 0 when there is no truth, F1 0 when either
  is 0. Totals are the sums of the per-image counts, with precision, recall and F1 recomputed
  from them (as solaris aggregates per AOI).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import shapely

from open_buildings.errors import EvaluationError
from open_buildings.evaluation.matching import Matching, Pairs, greedy_match, polygon_ious

#: The columns of a SpaceNet building CSV (``Confidence`` on proposals only).
SPACENET_COLUMNS = ("ImageId", "BuildingId", "PolygonWKT_Pix")
#: Largest SpaceNet CSV read (bytes); checked before reading.
MAX_CSV_BYTES = 2_000_000_000


@dataclass(frozen=True)
class Counts:
    """True/false positives, false negatives and the scores derived from them.

    Attributes:
        tp: True positives (proposals matched to a truth polygon).
        fp: False positives (proposals left unmatched).
        fn: False negatives (truth polygons left unmatched).
    """

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        """``tp / (tp + fp)``, 0 when there are no proposals."""
        return self.tp / float(self.tp + self.fp) if self.tp + self.fp > 0 else 0.0

    @property
    def recall(self) -> float:
        """``tp / (tp + fn)``, 0 when there is no truth."""
        return self.tp / float(self.tp + self.fn) if self.tp + self.fn > 0 else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall, 0 when either is 0."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p * r > 0 else 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def as_dict(self) -> dict[str, float | int]:
        """Return the counts and scores as a JSON-ready dict."""
        out: dict[str, float | int] = asdict(self)
        out.update(precision=self.precision, recall=self.recall, f1=self.f1)
        return out


@dataclass(frozen=True)
class F1Result:
    """SpaceNet F1 overall and per image, with the matched pairs.

    Attributes:
        total: Counts summed over all images.
        per_image: ``{image_id: Counts}``, in sorted image order.
        matches: ``(pred_index, truth_index, iou)`` of every true positive (global indices).
        iou_threshold: The IoU threshold used.
    """

    total: Counts
    per_image: dict[object, Counts]
    matches: tuple[np.ndarray, np.ndarray, np.ndarray]
    iou_threshold: float


def spacenet_f1(
    pred: np.ndarray,
    pred_scores: np.ndarray | None,
    truth: np.ndarray,
    *,
    pred_image: np.ndarray | None = None,
    truth_image: np.ndarray | None = None,
    iou_threshold: float = 0.5,
    min_area: float = 0.0,
    strict: bool = False,
    pairs: Pairs | None = None,
) -> F1Result:
    """Score proposals against truth with the SpaceNet building metric.

    Args:
        pred: Proposal polygons (planar coordinates: pixels or a metric CRS).
        pred_scores: Their confidences (None: all equal, so file order decides).
        truth: Truth polygons.
        pred_image: Image id of each proposal (None: all in one image).
        truth_image: Image id of each truth polygon (None: all in one image).
        iou_threshold: Minimum IoU for a match (0.5 in every SpaceNet challenge).
        min_area: Drop truth with area ``< min_area`` and proposals with area ``<= min_area``
            (SpaceNet 2: 20 px).
        strict: Require ``IoU > iou_threshold`` (solaris) instead of ``>=`` (SpaceNet utilities).
        pairs: Precomputed :func:`polygon_ious` of these inputs (computed if None).

    Returns:
        Counts per image (every image that has a proposal or a truth row) and in total.
    """
    pred = np.asarray(pred, dtype=object)
    truth = np.asarray(truth, dtype=object)
    scores = (
        np.ones(len(pred)) if pred_scores is None else np.asarray(pred_scores, dtype=np.float64)
    )
    if scores.shape != (len(pred),):
        raise EvaluationError(f"{len(pred)} proposals but {scores.size} confidences")
    p_img = np.zeros(len(pred), dtype=np.int64) if pred_image is None else np.asarray(pred_image)
    t_img = np.zeros(len(truth), dtype=np.int64) if truth_image is None else np.asarray(truth_image)
    if pairs is None:
        pairs = polygon_ious(pred, truth, p_img, t_img)
    p_area = shapely.area(pred) if len(pred) else np.zeros(0)
    t_area = shapely.area(truth) if len(truth) else np.zeros(0)
    p_keep = (p_area > min_area) & (p_area > 0)
    t_keep = t_area >= min_area
    per_image: dict[object, Counts] = {}
    total = Counts(0, 0, 0)
    mp: list[np.ndarray] = []
    mt: list[np.ndarray] = []
    mi: list[np.ndarray] = []
    ids = np.concatenate([p_img, t_img])
    for image in np.unique(ids) if len(ids) else ids:
        pi = np.flatnonzero((p_img == image) & p_keep)
        ti = np.flatnonzero((t_img == image) & t_keep)
        m = greedy_match(
            scores[pi],
            len(ti),
            pairs.subset(pi, ti),
            [iou_threshold],
            ties="first",
            strict=strict,
        )
        counts = _counts(m, t_area[ti])
        key = image.item() if isinstance(image, np.generic) else image
        per_image[key] = counts
        total = total + counts
        hit = m.matched[0]
        mp.append(pi[m.order[hit]])
        mt.append(ti[m.truth[0, hit]])
        mi.append(m.iou[0, hit])
    empty_i = np.zeros(0, dtype=np.int64)
    matches = (
        np.concatenate(mp) if mp else empty_i,
        np.concatenate(mt) if mt else empty_i,
        np.concatenate(mi) if mi else np.zeros(0),
    )
    return F1Result(total, per_image, matches, iou_threshold)


def _counts(m: Matching, truth_area: np.ndarray) -> Counts:
    hit = m.matched[0]
    tp = int(hit.sum())
    matched_truth = np.zeros(len(truth_area), dtype=bool)
    matched_truth[m.truth[0, hit]] = True
    fn = int(np.count_nonzero(~matched_truth & (truth_area > 0)))
    return Counts(tp, len(m.order) - tp, fn)


@dataclass(frozen=True)
class SpaceNetCSV:
    """The rows of a SpaceNet building CSV.

    Attributes:
        image_id: ``ImageId`` of each row.
        building_id: ``BuildingId`` of each row (-1 marks an image with no buildings).
        geometry: Polygons from ``PolygonWKT_Pix`` (pixel coordinates; z dropped), or from
            ``PolygonWKT_Geo`` when read with ``column="PolygonWKT_Geo"``. Empty for
            ``POLYGON EMPTY`` rows.
        confidence: ``Confidence`` of each row, or None if the file has no such column.
    """

    image_id: np.ndarray
    building_id: np.ndarray
    geometry: np.ndarray
    confidence: np.ndarray | None


def read_spacenet_csv(
    path: str | os.PathLike, *, column: str = "PolygonWKT_Pix", max_bytes: int = MAX_CSV_BYTES
) -> SpaceNetCSV:
    """Read a SpaceNet building CSV (``ImageId, BuildingId, PolygonWKT_Pix[, PolygonWKT_Geo]
    [, Confidence]``).

    Rows with ``BuildingId`` -1 or ``POLYGON EMPTY`` mean "this image has no buildings": they keep
    the image in the evaluation (its proposals are all false positives) with an empty geometry.

    Args:
        path: The CSV file.
        column: Which WKT column to read the polygons from.
        max_bytes: Refuse larger files (checked before reading).

    Returns:
        The rows, in file order.

    Raises:
        EvaluationError: If the file is too big, lacks a column, or a row's WKT is not a polygon
            (the row is named).
    """
    source = Path(path)
    size = source.stat().st_size
    if size > max_bytes:
        raise EvaluationError(f"{source}: {size:,} bytes is more than the {max_bytes:,} allowed")
    csv.field_size_limit(max(csv.field_size_limit(), min(max_bytes, 2**31 - 1)))
    with source.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        need = ("ImageId", "BuildingId", column)
        missing = [c for c in need if c not in header]
        if missing:
            raise EvaluationError(
                f"{source}: missing column(s) {missing}; a SpaceNet CSV has the columns "
                f"ImageId, BuildingId, PolygonWKT_Pix[, PolygonWKT_Geo][, Confidence] "
                f"(found {header})"
            )
        rows = list(reader)
    has_conf = "Confidence" in header
    image_id = np.array([r["ImageId"] for r in rows], dtype=object)
    building_id = np.array([_int(r["BuildingId"], source, i) for i, r in enumerate(rows)])
    wkt = [r[column] for r in rows]
    try:
        geoms = shapely.force_2d(shapely.from_wkt(wkt, on_invalid="raise"))
    except shapely.errors.GEOSException:
        geoms = np.array([_one_wkt(w, source, i, column) for i, w in enumerate(wkt)], dtype=object)
    geoms = np.asarray(geoms, dtype=object)
    for i, g in enumerate(geoms):
        if g is None or g.is_empty:
            geoms[i] = shapely.Polygon()
        elif g.geom_type not in ("Polygon", "MultiPolygon"):
            raise EvaluationError(
                f"{source}: row {i + 2} (ImageId {image_id[i]}, BuildingId {building_id[i]}) "
                f"is a {g.geom_type}, not a polygon; fix or remove that row"
            )
    geoms[building_id < 0] = shapely.Polygon()
    conf = None
    if has_conf:
        conf = np.array([_float(r["Confidence"], source, i) for i, r in enumerate(rows)])
    return SpaceNetCSV(image_id, building_id, geoms, conf)


def _one_wkt(text: str, source: Path, i: int, column: str) -> shapely.Geometry:
    try:
        return shapely.force_2d(shapely.from_wkt(text, on_invalid="raise"))
    except shapely.errors.GEOSException as e:
        raise EvaluationError(f"{source}: row {i + 2}: {column} is not valid WKT ({e})") from e


def _int(text: str, source: Path, i: int) -> int:
    try:
        return int(float(text))
    except ValueError as e:
        raise EvaluationError(f"{source}: row {i + 2}: BuildingId {text!r} is not a number") from e


def _float(text: str, source: Path, i: int) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise EvaluationError(f"{source}: row {i + 2}: Confidence {text!r} is not a number") from e
    if not np.isfinite(value):
        raise EvaluationError(f"{source}: row {i + 2}: Confidence is {text!r}; give a number")
    return value


def aggregate(per_image: dict[object, Counts], keys: Sequence[object]) -> Counts:
    """Sum the counts of some images (for example one SpaceNet AOI).

    Args:
        per_image: Counts per image, as in :attr:`F1Result.per_image`.
        keys: The images to sum.

    Returns:
        Their summed counts (precision, recall and F1 recomputed from the sums).
    """
    total = Counts(0, 0, 0)
    for key in keys:
        total = total + per_image[key]
    return total
