"""Chips: geometric augmentation moves image and masks together; colour touches the image only."""

import albumentations as A  # noqa: N812
import numpy as np
import pytest
from affine import Affine

from open_buildings.geo.grid import PixelGrid
from open_buildings.training import chips
from open_buildings.training.scenes import Scene


def _scene(bands: int = 3) -> Scene:
    rng = np.random.default_rng(0)
    instances = np.zeros((200, 200), np.int32)
    instances[50:80, 60:120] = 1
    instances[80:100, 60:90] = 2
    grid = PixelGrid("EPSG:32737", Affine(0.5, 0, 0, 0, -0.5, 0), 200, 200)
    ones = np.ones((200, 200), bool)
    rgb = rng.integers(0, 255, (bands, 200, 200), dtype=np.uint8)
    return Scene("t", "x", grid, rgb, ones, ones, instances)


def test_geometric_transform_moves_masks_with_the_image() -> None:
    chip = chips.cut(_scene(), 40, 40, 96)
    # Mark building pixels in the image, so we can check they still coincide after augmenting.
    chip.rgb[0] = np.where(chip.instances > 0, 255, 0)
    out, _ = chips.augment(chips.augmenter(), chip, seed=3)
    moved = out.rgb[0] > 127
    # Nearest-neighbour masks and bilinear image agree except along edges of rotated shapes.
    assert (moved == (out.instances > 0)).mean() > 0.97
    assert set(np.unique(out.instances)) <= {0, 1, 2}


def test_flip_is_exact_for_masks_and_image() -> None:
    chip = chips.cut(_scene(), 40, 40, 96)
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    out, soft = chips.augment(flip, chip, seed=0, extra=chip.rgb[:2].astype(np.float32))
    np.testing.assert_array_equal(out.rgb, chip.rgb[:, :, ::-1])
    np.testing.assert_array_equal(out.instances, chip.instances[:, ::-1])
    np.testing.assert_array_equal(soft, chip.rgb[:2, :, ::-1].astype(np.float32))


def test_colour_transforms_leave_masks_alone_and_work_for_four_bands() -> None:
    chip = chips.cut(_scene(bands=4), 40, 40, 96)
    colour = A.Compose([A.RandomBrightnessContrast(p=1.0), A.RandomGamma(p=1.0)])
    out, _ = chips.augment(colour, chip, seed=1)
    assert out.rgb.shape == (4, 96, 96)
    assert not np.array_equal(out.rgb, chip.rgb)
    np.testing.assert_array_equal(out.instances, chip.instances)
    np.testing.assert_array_equal(out.usable, chip.usable)


def test_same_seed_same_chip_and_empty_chips_have_no_buildings() -> None:
    pool = chips.ScenePool([_scene()])
    spec = chips.ChipSpec(size=32, empty_share=0.5)
    a = pool.sample(spec, chips.rng_for(0, 5, 1), with_buildings=True)
    b = pool.sample(spec, chips.rng_for(0, 5, 1), with_buildings=True)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    assert (a.instances > 0).any()
    empty = pool.sample(spec, chips.rng_for(0, 6, 1), with_buildings=False)
    assert not (empty.instances[empty.usable] > 0).any()


def test_pool_needs_scenes() -> None:
    with pytest.raises(ValueError, match="at least one scene"):
        chips.ScenePool([])
