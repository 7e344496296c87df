"""The OWL-ViT loader reproduces ``transformers.OwlViTForObjectDetection`` (random tiny weights).

A tiny detector is built from a config (vision tower shaped like ``owlvit_tiny``), its layer
norms and heads are perturbed away from their identity/zero initialisation so that every tensor
matters, and it is written with ``save_pretrained`` (safetensors). The converted models must give
the same object embeddings, boxes, text-query logits and image-guided detections, at the
pretraining size and at larger, non-square sizes (``interpolate_pos_encoding``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers  # a dev dependency: missing, it must fail, not skip

from open_buildings.errors import CheckpointError
from open_buildings.models import build_model
from open_buildings.models.convert.owlvit import load_detector, load_owlvit_backbone, load_queries
from open_buildings.models.owlvit import OWLVIT_B32, OWLVIT_TINY
from open_buildings.models.owlvit_detector import OwlViTDetector
from open_buildings.models.registry import load_pretrained

ATOL = 1e-5


def _hf_config(image_size: int = OWLVIT_TINY.pretrain_size) -> object:
    v = OWLVIT_TINY
    return transformers.OwlViTConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "vocab_size": 100,
            "max_position_embeddings": 16,
            "bos_token_id": 98,
            "eos_token_id": 99,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": v.width,
            "intermediate_size": v.mlp_dim,
            "num_hidden_layers": v.depth,
            "num_attention_heads": v.heads,
            "image_size": image_size,
            "patch_size": v.patch,
        },
        projection_dim=32,
    )


def _save_hf(folder: Path, image_size: int = OWLVIT_TINY.pretrain_size, seed: int = 0) -> object:
    torch.manual_seed(seed)
    model = transformers.OwlViTForObjectDetection(_hf_config(image_size)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "head" in name or "embedding" in name:
                p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    folder = tmp_path_factory.mktemp("owlvit_hf")
    return _save_hf(folder), folder


@pytest.fixture(scope="module")
def detector(hf: tuple[object, Path]) -> OwlViTDetector:
    return load_detector(hf[1])[0]


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=1e-5)


def _text_queries(model: object, tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids, and the queries HF's own text tower makes from them, via a .npy file."""
    ids = torch.randint(1, 98, (3, 8), generator=torch.Generator().manual_seed(1))
    ids[:, -1] = 99  # end of text: the pooled token
    with torch.no_grad():
        features = model.owlvit.get_text_features(input_ids=ids)
    features = getattr(features, "pooler_output", features)  # a tensor in transformers 4
    np.save(tmp_path / "queries.npy", features.numpy())
    return ids, load_queries(tmp_path / "queries.npy")


def test_report_counts_the_text_tower_as_unused(hf: tuple[object, Path]) -> None:
    model, folder = hf
    detector, report = load_detector(folder / "model.safetensors")
    assert report["loaded"] == len(detector.state_dict())
    unused = [
        k
        for k in model.state_dict()
        if not k.startswith(("owlvit.vision_model.", "box_", "class_", "layer_norm"))
    ]
    assert report["unused"] == len(unused) and report["unused"] > 0
    assert all(
        k.startswith(
            (
                "owlvit.text_model.",
                "owlvit.text_projection",
                "owlvit.visual_projection",
                "owlvit.logit_scale",
            )
        )
        for k in unused
    )
    # the architecture read from the tensors and config.json is owlvit_tiny's encoder
    assert detector.config.vit == replace(OWLVIT_TINY, decoder_channels=128, detail_channels=32)
    assert detector.config.query_dim == 32


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_text_queried_detection_matches_hf(
    hf: tuple[object, Path], detector: OwlViTDetector, tmp_path: Path, size: tuple[int, int]
) -> None:
    model, _ = hf
    ids, queries = _text_queries(model, tmp_path)
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = model(
            input_ids=ids.repeat(2, 1),
            pixel_values=pixels,
            interpolate_pos_encoding=size != (64, 64),
        )
        ours = detector(pixels, queries)
    _close(ours.image_embeds, theirs.image_embeds)
    _close(ours.boxes, theirs.pred_boxes)
    _close(ours.logits, theirs.logits)
    _close(ours.class_embeds, theirs.class_embeds)
    assert float(theirs.logits.std()) > 0.1  # the comparison is not between constants


@pytest.mark.parametrize("size", [(64, 64), (80, 112)])
def test_image_guided_detection_matches_hf(
    hf: tuple[object, Path], detector: OwlViTDetector, size: tuple[int, int]
) -> None:
    model, _ = hf
    gen = torch.Generator().manual_seed(3)
    target = torch.randn(1, 3, *size, generator=gen)
    query = torch.randn(1, 3, *size, generator=gen)
    interpolate = size != (64, 64)
    with torch.no_grad():
        theirs = model.image_guided_detection(
            pixel_values=target, query_pixel_values=query, interpolate_pos_encoding=interpolate
        )
        feature_map = model.image_embedder(query, interpolate_pos_encoding=interpolate)[0]
        feats = feature_map.reshape(1, -1, feature_map.shape[-1])
        _, their_index, _ = model.embed_image_query(feats, feature_map, interpolate)
        example = detector.embed_example(query)
        ours = detector(target, example.embedding[None])
    assert example.index == int(their_index)
    _close(example.pred_boxes, theirs.query_pred_boxes[0])
    _close(ours.boxes, theirs.target_pred_boxes)
    _close(ours.logits, theirs.logits)


def test_backbone_loader_fills_the_segmentation_encoder(hf: tuple[object, Path]) -> None:
    model, folder = hf
    seg = build_model("owlvit_tiny").eval()
    decoder_before = {k: v.clone() for k, v in seg.net.decoder.state_dict().items()}
    report = load_pretrained(seg, folder / "model.safetensors")  # the registry's dispatcher
    assert report["loaded"] == len(seg.net.encoder.state_dict())
    source = model.state_dict()
    encoder_keys = [k for k in source if k.startswith(("owlvit.vision_model.", "layer_norm."))]
    assert report["unused"] == len(source) - len(encoder_keys)  # text tower, heads, projections
    for k, v in seg.net.decoder.state_dict().items():
        assert torch.equal(v, decoder_before[k]), k
    pixels = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = seg.net.encoder(pixels)
        vision = model.owlvit.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)
        theirs_map = model.image_embedder(pixels, interpolate_pos_encoding=True)[0]
    _close(ours.tokens, model.owlvit.vision_model.post_layernorm(vision.last_hidden_state))
    _close(ours.features[-1], theirs_map.reshape(1, -1, theirs_map.shape[-1]))
    assert ours.grid == (4, 6)


def test_checkpoint_for_another_image_size_is_interpolated(tmp_path: Path) -> None:
    model = _save_hf(tmp_path, image_size=32, seed=5)  # a 2 x 2 position grid
    seg = build_model("owlvit_tiny").eval()  # a 4 x 4 grid
    load_owlvit_backbone(seg, tmp_path / "model.safetensors")
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        theirs = model.image_embedder(pixels, interpolate_pos_encoding=True)[0]
        ours = seg.net.encoder(pixels).features[-1]
    _close(ours, theirs.reshape(1, -1, theirs.shape[-1]))


def test_mismatches_are_clear_errors(hf: tuple[object, Path], tmp_path: Path) -> None:
    _, folder = hf
    with pytest.raises(CheckpointError, match="does not exist"):
        load_detector(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_detector(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not an OWL-ViT checkpoint"):
        load_detector(tmp_path / "other.safetensors")
    big = build_model("owlvit_tiny", width=128, heads=4)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_owlvit_backbone(big, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="no OWL-ViT image encoder"):
        load_owlvit_backbone(build_model("unet_tiny"), folder / "model.safetensors")


@pytest.mark.slow
def test_published_b32_architecture_matches_hf(tmp_path: Path) -> None:
    """transformers' default OwlViTConfig is google/owlvit-base-patch32's (random weights here)."""
    torch.manual_seed(7)
    model = transformers.OwlViTForObjectDetection(transformers.OwlViTConfig()).eval()
    model.save_pretrained(tmp_path)
    detector, _ = load_detector(tmp_path)
    assert detector.config.vit == replace(OWLVIT_B32, decoder_channels=128)
    seg = build_model("owlvit_b32")
    report = load_owlvit_backbone(seg, tmp_path / "model.safetensors")
    assert report["loaded"] == len(seg.net.encoder.state_dict())
    ids = torch.randint(1, 49406, (2, 16), generator=torch.Generator().manual_seed(8))
    ids[:, -1] = 49407
    pixels = torch.randn(1, 3, 768, 768, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        theirs = model(input_ids=ids, pixel_values=pixels)
        queries = theirs.text_embeds[0]
        ours = detector(pixels, queries)
        seg_feature = seg.net.encoder(pixels).features[-1]
    _close(ours.image_embeds, theirs.image_embeds)
    _close(ours.boxes, theirs.pred_boxes)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-4, rtol=1e-5)
    _close(seg_feature, theirs.image_embeds.reshape(1, -1, 768))
