"""The synthetic phantom: deterministic, balanced, with the confounder planted where docs/design.md §3 says."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from exbl_core.data import CLASSES, VIRAL_PNEUMONIA
from exbl_core.synthetic import SPLITS, SyntheticConfig, generate_split, oracle_config, render_phantom

SMALL = SyntheticConfig(size=64, n_train=8, n_val=4, n_test=4)
# Many labels at a tiny size: enough images to check the confounder's rates.
STATS = SyntheticConfig(size=16, n_train=100, n_val=100, n_test=100, confounder_strength=0.7, other_child_rate=0.1)


def test_same_config_gives_identical_images_masks_labels_and_confounders():
    a, b = generate_split("train", SMALL), generate_split("train", SMALL)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.masks, b.masks)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.child, b.child)


def test_another_seed_gives_other_images():
    a, b = generate_split("train", SMALL), generate_split("train", replace(SMALL, seed=1))
    assert not torch.equal(a.images, b.images)


def test_splits_of_one_seed_are_different_images():
    assert not torch.equal(generate_split("test", SMALL).images, generate_split("shortcut_test", SMALL).images)


@pytest.mark.parametrize("split, per_class", [("train", 8), ("val", 4), ("test", 4), ("shortcut_test", 4)])
def test_each_split_holds_the_configured_number_of_images_per_class(split, per_class):
    s = generate_split(split, SMALL)
    assert s.class_counts() == {c: per_class for c in CLASSES}
    assert s.images.shape == (4 * per_class, 1, 64, 64)
    assert s.images.dtype == torch.uint8
    assert s.masks.shape == (4 * per_class, 64, 64)
    assert s.masks.dtype == torch.bool


def test_every_phantom_has_a_lung_mask_covering_a_plausible_share_of_the_image():
    share = generate_split("train", SMALL).masks.float().mean((1, 2))
    assert bool(((share > 0.1) & (share < 0.5)).all()), share


def test_the_demo_resolution_of_128_pixels_generates():
    s = generate_split("train", SyntheticConfig(size=128, n_train=1))
    assert s.images.shape == (4, 1, 128, 128)
    assert s.images.float().std() > 10  # not a blank image


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_confounder_is_tied_to_viral_pneumonia_in_confounded_splits(split):
    s = generate_split(split, STATS)
    vp = s.labels == VIRAL_PNEUMONIA
    vp_rate = s.child[vp].float().mean().item()
    other_rate = s.child[~vp].float().mean().item()
    assert vp_rate == pytest.approx(STATS.confounder_strength, abs=0.12)
    assert other_rate == pytest.approx(STATS.other_child_rate, abs=0.06)


def test_full_confounder_strength_marks_every_viral_pneumonia_image_and_no_other():
    s = generate_split("train", SyntheticConfig(size=16, n_train=20, confounder_strength=1.0, other_child_rate=0.0))
    assert torch.equal(s.child, s.labels == VIRAL_PNEUMONIA)


def test_confounder_is_independent_of_the_class_in_shortcut_test():
    s = generate_split("shortcut_test", STATS)
    for label, cls in enumerate(CLASSES):
        rate = s.child[s.labels == label].float().mean().item()
        assert rate == pytest.approx(STATS.shortcut_child_rate, abs=0.15), cls


def _render(label: int, child: bool, cfg: SyntheticConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return render_phantom(label, child, np.random.default_rng(seed), cfg)[:2]


@pytest.mark.parametrize("seed", range(4))
def test_confounder_region_covers_every_pixel_the_child_anatomy_changes_and_lies_outside_the_lungs(seed):
    cfg = SyntheticConfig(size=128)
    adult, mask, region = render_phantom(VIRAL_PNEUMONIA, False, np.random.default_rng(seed), cfg)
    child, _, region_child = render_phantom(VIRAL_PNEUMONIA, True, np.random.default_rng(seed), cfg)
    changed = np.abs(child - adult) > 1e-6
    assert np.array_equal(region, region_child), "the region is the same whether the child anatomy is drawn or not"
    assert changed.sum() > 50 and (changed & ~region).sum() <= 0.02 * changed.sum(), "the region holds the confounder"
    assert not (region & mask).any()
    # Large enough for CP to reach 1: the top 5% of a CAM can fit inside it.
    assert region.sum() >= 0.05 * region.size


@pytest.mark.parametrize("seed", range(4))
def test_one_sided_child_anatomy_is_drawn_on_one_humerus_head_whose_region_alone_is_returned(seed):
    cfg = SyntheticConfig(size=128, confounder_sides="one")
    adult, _, region = render_phantom(VIRAL_PNEUMONIA, False, np.random.default_rng(seed), cfg)
    child, _, region_child = render_phantom(VIRAL_PNEUMONIA, True, np.random.default_rng(seed), cfg)
    _, _, both = render_phantom(VIRAL_PNEUMONIA, True, np.random.default_rng(seed), replace(cfg, confounder_sides="both"))
    changed = np.abs(child - adult) > 1e-6
    half = cfg.size // 2
    assert np.array_equal(region, region_child)
    assert region[:, :half].any() != region[:, half:].any(), "one humerus head only"
    assert changed.sum() > 25 and (changed & ~region).sum() <= 0.02 * changed.sum()
    assert 0.35 * both.sum() < region.sum() < 0.65 * both.sum()


def test_one_sided_child_anatomy_falls_on_either_side_and_keeps_the_oracle_on_the_same_phantoms():
    cfg = SyntheticConfig(size=32, n_train=60, n_val=2, n_test=2, seed=1, confounder_sides="one")
    plain, oracle = generate_split("train", cfg), generate_split("train", oracle_config(cfg))
    right = plain.regions[:, :, 16:].flatten(1).any(1).float().mean()
    assert 0.3 < right < 0.7
    assert torch.equal(plain.regions, oracle.regions)
    same = oracle.child == plain.child
    assert torch.equal(oracle.images[same], plain.images[same]), "only the child anatomy differs"


def test_both_sides_stay_the_default_and_an_unknown_choice_is_refused():
    assert SyntheticConfig().confounder_sides == "both"
    with pytest.raises(ValueError, match="confounder_sides"):
        SyntheticConfig(confounder_sides="left")


def test_every_synthetic_split_carries_the_confounder_region(tiny_data):
    for split in tiny_data.values():
        assert split.regions is not None and split.regions.shape == split.masks.shape
        assert split.regions.flatten(1).any(1).all()


def test_the_oracle_draws_the_same_phantoms_with_child_anatomy_independent_of_the_class():
    cfg = SyntheticConfig(size=32, n_train=60, n_val=2, n_test=2, seed=1)
    plain, oracle = generate_split("train", cfg), generate_split("train", oracle_config(cfg))
    assert torch.equal(plain.labels, oracle.labels) and torch.equal(plain.masks, oracle.masks)
    vp = oracle.labels == VIRAL_PNEUMONIA
    assert plain.child[vp].all() and not plain.child[~vp].any()
    assert 0.3 < oracle.child[vp].float().mean() < 0.7 and 0.3 < oracle.child[~vp].float().mean() < 0.7
    same = oracle.child == plain.child
    assert torch.equal(oracle.images[same], plain.images[same]), "only the child anatomy differs"


@pytest.mark.parametrize("seed", range(6))
def test_confounder_changes_pixels_only_outside_the_lung_mask(seed):
    # Drawing the confounder takes no random numbers, so the same generator state gives
    # the same phantom with and without it: any difference is the confounder itself.
    cfg = SyntheticConfig(size=128)
    adult, mask = _render(VIRAL_PNEUMONIA, False, cfg, seed)
    child, mask_child = _render(VIRAL_PNEUMONIA, True, cfg, seed)
    changed = np.abs(child - adult) > 1e-6
    assert np.array_equal(mask, mask_child)
    assert changed.sum() > 50, "the confounder should be visible"
    assert not (changed & mask).any(), f"{(changed & mask).sum()} confounder pixels inside the lungs"


@pytest.mark.parametrize("cls", ["COVID", "Lung_Opacity", "Viral Pneumonia"])
@pytest.mark.parametrize("seed", range(4))
def test_pathology_changes_pixels_only_inside_the_lung_mask(cls, seed):
    # The strength knobs only scale the lesions, so strength 0 and the default draw the
    # same random numbers: the difference is exactly the pathology.
    label = CLASSES.index(cls)
    cfg = SyntheticConfig(size=128)
    without = replace(cfg, pathology_strength=0.0, viral_strength=0.0)
    sick, mask = _render(label, False, cfg, seed)
    clear, _ = _render(label, False, without, seed)
    changed = np.abs(sick - clear) > 1e-6
    assert changed.sum() > 20, "the pathology should be visible"
    assert not (changed & ~mask).any(), f"{(changed & ~mask).sum()} pathology pixels outside the lungs"


def test_normal_class_has_no_pathology_to_scale():
    cfg = SyntheticConfig(size=64)
    a, _ = _render(CLASSES.index("Normal"), False, cfg, 0)
    b, _ = _render(CLASSES.index("Normal"), False, replace(cfg, pathology_strength=0.0, viral_strength=0.0), 0)
    assert np.array_equal(a, b)


def test_unknown_split_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="shortcut_test"):
        generate_split("holdout", SMALL)


def test_empty_split_is_refused():
    with pytest.raises(ValueError, match="at least one image"):
        generate_split("val", replace(SMALL, n_val=0))


def test_the_four_splits_are_named_as_in_the_design():
    assert SPLITS == ("train", "val", "test", "shortcut_test")
