"""Change scores on known masks: pixel counts, one-to-one object matching at IoU 0.5, pooling."""

from __future__ import annotations

import numpy as np

from open_buildings.evaluation.change_scores import ChangeCounts, count_change, prf


def test_pixels_and_objects_are_counted_and_matched_at_iou_half() -> None:
    truth = np.zeros((20, 20), bool)
    truth[2:6, 2:6] = True  # 16 px, found well (IoU 12/16)
    truth[10:14, 10:14] = True  # 16 px, found poorly (IoU 4/16)
    pred = np.zeros((20, 20), bool)
    pred[2:6, 3:6] = True
    pred[12:14, 12:14] = True
    pred[17:19, 0:2] = True  # a false change
    counts = count_change(pred, truth)
    assert (counts.tp_px, counts.pred_px, counts.truth_px) == (16, 20, 32)
    assert (counts.tp_obj, counts.pred_obj, counts.truth_obj) == (1, 3, 2)
    scores = counts.scores()
    assert scores["object_iou50"]["precision"] == 1 / 3 and scores["object_iou50"]["recall"] == 0.5
    assert scores["pixel"]["f1"] == prf(16, 20, 32)["f1"] == 2 * 0.8 * 0.5 / 1.3


def test_given_objects_replace_the_connected_components() -> None:
    truth = np.zeros((8, 8), bool)
    truth[0:4, 0:8] = True  # one changed building, 32 px
    parts = np.zeros((8, 8), np.int32)
    parts[0:4, 0:3], parts[0:4, 3:6], parts[0:4, 6:8] = 1, 2, 3  # three touching footprints
    assert count_change(parts > 0, truth).tp_obj == 1  # as one blob it matches
    split = count_change(parts > 0, truth, pred_objects=parts)
    assert (split.tp_obj, split.pred_obj) == (0, 3)  # no part reaches IoU 0.5


def test_counts_pool_over_images_and_empty_ones_score_zero() -> None:
    a = ChangeCounts(1, 2, 3, 1, 1, 2)
    assert vars(a + ChangeCounts(1, 1, 1, 0, 1, 1)) == vars(ChangeCounts(2, 3, 4, 1, 2, 3))
    assert ChangeCounts().scores()["pixel"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
