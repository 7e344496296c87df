"""Targets and decoding on hand-made arrays whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from open_buildings.models.heads import CHANNELS, decode, make_targets


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _perfect_probs(instances: np.ndarray) -> np.ndarray:
    return make_targets(instances).target


def _match(truth: np.ndarray, labels: np.ndarray) -> list[float]:
    ious = []
    for ident in np.unique(truth[truth > 0]):
        mask = truth == ident
        best = np.bincount(labels[mask]).argmax()
        ious.append(_iou(mask, labels == best) if best else 0.0)
    return ious


def test_channels_are_building_then_interior() -> None:
    assert CHANNELS == ("building", "interior")


def test_targets_of_one_square() -> None:
    inst = np.zeros((12, 12), np.int32)
    inst[2:8, 3:9] = 5
    t = make_targets(inst)
    assert t.target.shape == (2, 12, 12) and t.target.dtype == np.float32
    assert t.weight.shape == (12, 12) and t.weight.dtype == np.float32
    np.testing.assert_array_equal(t.target[0], inst > 0)
    expected_interior = np.zeros((12, 12), bool)
    expected_interior[3:7, 4:8] = True
    np.testing.assert_array_equal(t.target[1], expected_interior)


def test_one_pixel_contact_gives_separated_interiors() -> None:
    inst = np.zeros((12, 16), np.int32)
    inst[2:7, 1:7] = 1
    inst[6:11, 7:13] = 2  # touches instance 1 at one corner pixel, diagonally
    inst[6, 6] = 2  # and now along one pixel edge: (6,6) in 2 is 4-adjacent to (5,6) in 1
    t = make_targets(inst)
    interior = t.target[1].astype(bool)
    from scipy import ndimage as ndi

    comps, n = ndi.label(interior, structure=np.ones((3, 3)))
    assert n == 2
    # each interior lies in its own building
    for c in (1, 2):
        assert len(np.unique(inst[comps == c])) == 1


def test_thin_building_keeps_a_seed() -> None:
    inst = np.zeros((8, 8), np.int32)
    inst[3, 1:7] = 1  # a 1-pixel-wide building has no eroded interior
    t = make_targets(inst)
    assert t.target[1].sum() == 1
    assert inst[t.target[1].astype(bool)].tolist() == [1]


def test_weight_is_one_far_from_buildings_and_highest_at_edges() -> None:
    inst = np.zeros((40, 40), np.int32)
    inst[5:15, 5:15] = 1
    t = make_targets(inst, edge_weight=2.0, separation_weight=10.0, sigma_px=2.0)
    assert t.weight[39, 39] == pytest.approx(1.0, abs=1e-6)
    # on the border ring: d_edge = 0, single building so no separation term
    assert t.weight[5, 9] == pytest.approx(3.0, abs=1e-6)
    # two pixels outside: 1 + 2 exp(-2^2 / 8)
    assert t.weight[3, 9] == pytest.approx(1 + 2 * math.exp(-0.5), rel=1e-6)
    assert t.weight.min() >= 1.0


def test_weight_in_a_one_pixel_gap_matches_the_formula() -> None:
    inst = np.zeros((10, 21), np.int32)
    inst[:, 0:10] = 1
    inst[:, 11:21] = 2
    s, w_e, w_s = 3.0, 2.0, 10.0
    t = make_targets(inst, edge_weight=w_e, separation_weight=w_s, sigma_px=s)
    # gap pixel: d_edge = 1 (ring next door), d1 = d2 = 1
    expected = 1 + w_e * math.exp(-1 / (2 * s * s)) + w_s * math.exp(-4 / (2 * s * s))
    assert t.weight[5, 10] == pytest.approx(expected, rel=1e-6)
    # contact pixel of building 1: d_edge = 0, d1 = 0, d2 = 2
    expected = 1 + w_e + w_s * math.exp(-4 / (2 * s * s))
    assert t.weight[5, 9] == pytest.approx(expected, rel=1e-6)


def test_empty_chip() -> None:
    t = make_targets(np.zeros((16, 16), np.int64))
    assert not t.target.any()
    assert np.all(t.weight == 1)
    labels, conf = decode(t.target, from_logits=False)
    assert labels.dtype == np.int32 and not labels.any()
    assert conf.shape == (1,)


def test_bad_instances_are_errors() -> None:
    with pytest.raises(ValueError, match="2-D"):
        make_targets(np.zeros((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match="integer ids"):
        make_targets(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        make_targets(-np.ones((4, 4), np.int32))


def test_two_touching_squares_come_out_as_two() -> None:
    inst = np.zeros((24, 30), np.int32)
    inst[4:16, 3:13] = 1
    inst[4:16, 13:25] = 2  # shares a full edge with 1
    labels, conf = decode(_perfect_probs(inst), from_logits=False, min_pixels=1)
    assert labels.max() == 2
    ious = _match(inst, labels)
    assert min(ious) >= 0.9
    np.testing.assert_array_equal(labels > 0, inst > 0)
    assert conf.shape == (3,) and conf[1:].tolist() == [1.0, 1.0]


def test_touching_at_one_pixel_and_many_buildings() -> None:
    inst = np.zeros((40, 40), np.int32)
    inst[2:10, 2:10] = 1
    inst[10:18, 10:18] = 2  # diagonal corner contact with 1
    inst[2:10, 10:20] = 3  # edge contact with 1, corner contact with 2
    inst[25:35, 5:15] = 4
    inst[25:35, 15:18] = 5  # three pixels wide (1.5 m), touching 4 along its length
    labels, _ = decode(_perfect_probs(inst), from_logits=False, min_pixels=1)
    assert labels.max() == 5
    assert min(_match(inst, labels)) >= 0.9


def test_a_hole_stays_a_hole() -> None:
    inst = np.zeros((20, 20), np.int32)
    inst[3:17, 3:17] = 1
    inst[8:12, 8:12] = 0  # courtyard
    labels, _ = decode(_perfect_probs(inst), from_logits=False, min_pixels=1)
    assert labels.max() == 1
    assert not labels[8:12, 8:12].any()
    np.testing.assert_array_equal(labels > 0, inst > 0)


def test_confidence_is_the_mean_building_probability() -> None:
    probs = np.zeros((2, 10, 10), np.float32)
    probs[0, 1:4, 1:5] = [[0.6, 0.7, 0.8, 0.9]] * 3
    probs[1, 2, 2:4] = 0.9
    probs[0, 6:9, 6:9] = 0.55  # a second blob without any interior: kept as its own instance
    labels, conf = decode(probs, from_logits=False, min_pixels=1)
    assert labels.max() == 2
    first = labels[2, 2]
    assert conf[first] == pytest.approx((0.6 + 0.7 + 0.8 + 0.9) / 4, abs=1e-6)
    assert conf[labels[7, 7]] == pytest.approx(0.55, abs=1e-6)
    assert conf[0] == 0


def test_decode_from_logits_torch_and_min_pixels() -> None:
    inst = np.zeros((16, 16), np.int32)
    inst[2:10, 2:10] = 1
    inst[12:14, 12:14] = 2  # 4 pixels
    probs = _perfect_probs(inst)
    logits = torch.from_numpy(np.where(probs > 0.5, 8.0, -8.0).astype(np.float32))
    labels, conf = decode(logits, min_pixels=5)
    assert labels.max() == 1
    assert conf[1] == pytest.approx(1 / (1 + math.exp(-8)), rel=1e-6)
    labels, _ = decode(logits, min_pixels=4)
    assert labels.max() == 2


def test_decode_rejects_wrong_shapes_and_ranges() -> None:
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        decode(np.zeros((1, 2, 8, 8)))
    with pytest.raises(ValueError, match="from_logits=True"):
        decode(np.full((2, 4, 4), 3.0), from_logits=False)


def test_seeds_per_component_agrees_with_counting_pairs() -> None:
    from open_buildings.models.heads import _seeds_per_component

    rng = np.random.default_rng(1)
    for top in (50, 2**30):  # small ids use the sums, huge ones the exact pair count
        owner = rng.integers(1, 40, 3000)
        ids = np.where(owner % 3 == 0, owner * 7 % top + 1, rng.integers(1, top, 3000))
        n, single, seed_of = _seeds_per_component(owner, ids, 45)
        for c in range(46):
            mine = np.unique(ids[owner == c])
            assert n[c] == np.count_nonzero(owner == c)
            assert single[c] == (mine.size == 1)
            assert seed_of[c] == (mine[0] if mine.size == 1 else 0)
        assert single.any() and (~single & (n > 0)).any()
