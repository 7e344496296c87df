"""OWL-ViT's image side, checked against outputs computed by hand.

The comparison with ``transformers.OwlViTForObjectDetection`` is in test_owlvit_convert.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from open_buildings.errors import ConfigError
from open_buildings.models import build_model, list_models
from open_buildings.models.owlvit import (
    CLIP_MEAN,
    OWLVIT_TINY,
    OwlViTImageEncoder,
    box_bias,
    cxcywh_to_xyxy,
)
from open_buildings.models.owlvit_detector import DetectorConfig, OwlViTDetector

TINY = DetectorConfig(vit=OWLVIT_TINY, query_dim=8)


def _inv_sigmoid(p: float) -> float:
    return math.log(p + 1e-4) - math.log1p(-p + 1e-4)


def _patch_box_detector(query: torch.Tensor) -> OwlViTDetector:
    """A detector whose box head outputs 0 (boxes = the bias: one patch each) and whose class
    head scores every patch by the first object-embedding channel against ``query``."""
    torch.manual_seed(0)
    det = OwlViTDetector(TINY).eval()
    with torch.no_grad():
        det.box_head.dense2.weight.zero_()
        det.box_head.dense2.bias.zero_()
        det.class_head.logit_scale.weight.zero_()
        det.class_head.logit_scale.bias.zero_()  # elu(0) + 1 = 1
        det.class_head.logit_shift.weight.zero_()
        det.class_head.logit_shift.bias.zero_()
    return det


def test_registered() -> None:
    assert {"owlvit_b32", "owlvit_b16", "owlvit_tiny"} <= set(list_models())
    model = build_model("owlvit_tiny")
    assert model.input_spec.mean == CLIP_MEAN
    assert model.input_spec.divisor == OWLVIT_TINY.patch
    assert isinstance(model.net.encoder, OwlViTImageEncoder)


def test_b32_and_b16_shapes_on_the_meta_device() -> None:
    with torch.device("meta"):
        b32 = build_model("owlvit_b32")
        b16 = build_model("owlvit_b16")
    for model, patch in ((b32, 32), (b16, 16)):
        vit = model.net.encoder.vit
        assert vit.patch_embed.weight.shape == (768, 3, patch, patch)
        assert vit.pos_embed.shape == (1, 1 + (768 // patch) ** 2, 768)
        assert len(vit.blocks) == 12
        assert vit.blocks[0].mlp.fc1.weight.shape == (3072, 768)
        assert vit.blocks[0].attn.heads == 12
        assert vit.blocks[0].norm1.eps == 1e-5


def test_box_bias_is_the_inverse_sigmoid_of_patch_corners_and_size() -> None:
    rows, cols = 2, 3
    bias = box_bias(rows, cols)
    assert bias.shape == (rows * cols, 4)
    for i in range(rows):
        for j in range(cols):
            expected = [
                _inv_sigmoid((j + 1) / cols),
                _inv_sigmoid((i + 1) / rows),
                _inv_sigmoid(1 / cols),
                _inv_sigmoid(1 / rows),
            ]
            # float32 rounding of 1 - 1e-4 near the last corner costs ~1e-3
            assert bias[i * cols + j].tolist() == pytest.approx(expected, abs=2e-3)


def test_object_embeddings_are_layer_normed_products_with_the_class_token() -> None:
    torch.manual_seed(0)
    encoder = OwlViTImageEncoder(OWLVIT_TINY)
    with torch.no_grad():
        encoder.layer_norm.weight.normal_()
        encoder.layer_norm.bias.normal_()
    tokens = torch.randn(2, 1 + 6, OWLVIT_TINY.width)
    got = encoder.object_embeddings(tokens)
    ln = encoder.layer_norm
    for b in range(2):
        for k in range(6):
            product = tokens[b, 1 + k] * tokens[b, 0]
            mean, var = product.mean(), product.var(unbiased=False)
            expected = (product - mean) / torch.sqrt(var + 1e-5) * ln.weight + ln.bias
            torch.testing.assert_close(got[b, k], expected, atol=1e-5, rtol=1e-5)


def test_segmenter_decodes_the_object_embeddings() -> None:
    torch.manual_seed(0)
    encoder = OwlViTImageEncoder(OWLVIT_TINY).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        out = encoder(x)
        plain = encoder.vit(x)
    assert out.grid == (2, 3) and len(out.features) == 4
    torch.testing.assert_close(out.features[-1], encoder.object_embeddings(plain.tokens))
    for ours, theirs in zip(out.features[:3], plain.features[:3], strict=True):
        assert torch.equal(ours, theirs)


def test_class_head_is_a_shifted_scaled_cosine() -> None:
    det = _patch_box_detector(torch.zeros(1))
    feats = torch.randn(1, 5, OWLVIT_TINY.width)
    queries = torch.randn(3, TINY.query_dim)
    with torch.no_grad():
        det.class_head.logit_shift.bias.fill_(0.5)
        det.class_head.logit_scale.bias.fill_(-1.0)  # elu(-1) + 1 = exp(-1)
        logits, embeds = det.class_head(feats, queries)
        proj = det.class_head.dense0(feats)
    cosine = F.cosine_similarity(proj[0, :, None], queries[None], dim=-1)
    torch.testing.assert_close(logits[0], (cosine + 0.5) * math.exp(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(1, 5), atol=1e-5, rtol=0)


def test_zero_box_head_predicts_one_patch_per_token() -> None:
    det = _patch_box_detector(torch.zeros(1))
    with torch.no_grad():
        out = det(torch.randn(1, 3, 32, 48))
    corners = cxcywh_to_xyxy(out.boxes[0])
    # patch (i, j) of a 2 x 3 grid: a patch-sized box centred on the patch's bottom-right corner
    expected = torch.tensor(
        [
            [(j + 0.5) / 3, (i + 0.5) / 2, (j + 1.5) / 3, (i + 1.5) / 2]
            for i in range(2)
            for j in range(3)
        ]
    )
    torch.testing.assert_close(corners, expected, atol=2e-4, rtol=0)
    assert out.logits is None and out.class_embeds.shape == (1, 6, TINY.query_dim)


def test_detect_returns_pixel_boxes_clipped_to_the_image() -> None:
    det = _patch_box_detector(torch.zeros(1))
    queries = torch.randn(2, TINY.query_dim)
    images = torch.rand(1, 3, 40, 40)  # padded to 48 x 48: a 3 x 3 grid of 16 px patches
    with torch.no_grad():
        raw = det(det.normalize(images)[0], queries)
    (found,) = det.detect(images, queries, threshold=0.0, nms_iou=0.5)
    assert len(found.boxes) == 9  # patch boxes do not overlap: NMS keeps all
    scores = torch.sigmoid(raw.logits[0].max(dim=-1).values)
    order = torch.argsort(scores, descending=True)
    torch.testing.assert_close(found.scores, scores[order])
    assert torch.equal(found.labels, raw.logits[0].argmax(dim=-1)[order])
    cells = torch.tensor(
        [
            [16.0 * j + 8, 16.0 * i + 8, 16.0 * j + 24, 16.0 * i + 24]
            for i in range(3)
            for j in range(3)
        ]
    )
    torch.testing.assert_close(found.boxes, cells[order].clamp(max=40.0), atol=0.02, rtol=0)
    (strict,) = det.detect(images, queries, threshold=float(scores.median()))
    assert len(strict.boxes) == int((scores > scores.median()).sum())


def test_nms_drops_overlapping_boxes_of_the_same_query() -> None:
    det = _patch_box_detector(torch.zeros(1))
    with torch.no_grad():  # every patch predicts the same big box (no centre bias can move it)
        det.box_head.dense2.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]) - 50.0)
        det.box_head.dense2.bias[2:] = 50.0
    (kept,) = det.detect(torch.rand(1, 3, 32, 32), torch.randn(1, 8), threshold=0.0, nms_iou=0.3)
    (all_,) = det.detect(torch.rand(1, 3, 32, 32), torch.randn(1, 8), threshold=0.0, nms_iou=None)
    assert len(kept.boxes) == 1 and len(all_.boxes) == 4


def test_example_box_picks_the_patch_predicting_it() -> None:
    det = _patch_box_detector(torch.zeros(1))
    x = torch.randn(1, 3, 32, 48)
    # patch (0, 1) predicts x 1.5/3..2.5/3, y 0.5/2..1.5/2; the other boxes only touch it
    example = det.embed_example(x, torch.tensor([0.5, 0.25, 2.5 / 3, 0.75]))
    assert example.index == 1
    with torch.no_grad():
        raw = det(x).class_embeds[0]
    assert torch.equal(example.embedding, raw[1])
    torch.testing.assert_close(
        example.box, torch.tensor([0.5, 0.25, 2.5 / 3, 0.75]), atol=1e-4, rtol=0
    )
    # a box straddling the boxes of patches (0, 0) and (0, 1) (IoU 1/3 each) picks one of them
    assert det.embed_example(x, torch.tensor([1 / 3, 0.25, 2 / 3, 0.75])).index in (0, 1)
    # no predicted box overlaps a box beyond the image: generalised IoU picks the nearest
    assert det.embed_example(x, torch.tensor([1.3, 1.3, 1.4, 1.4])).index == 5
    with pytest.raises(ValueError, match="x1 > x0"):
        det.embed_example(x, torch.tensor([0.5, 0.5, 0.4, 0.6]))


def test_bad_configs_and_inputs_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="class_token=True"):
        OwlViTImageEncoder(OWLVIT_TINY.__class__(class_token=False))
    det = OwlViTDetector(TINY)
    with pytest.raises(ValueError, match="8-d; make them with the text tower"):
        det(torch.randn(1, 3, 32, 32), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        det.detect(torch.rand(3, 32, 32), torch.randn(1, 8))
    with pytest.raises(ValueError, match="floats in"):
        det.detect(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.randn(1, 8))
