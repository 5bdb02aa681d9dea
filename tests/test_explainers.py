"""Explainers: the registry, occlusion against a naive loop, faithfulness on toy models, settings errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exbl_core import explainers
from exbl_core.explainers.deletion import deletion_scores, top_pixels
from exbl_core.explainers.occlusion import Occlusion
from exbl_core.metrics import confounder_precision_scores


def naive_occlusion(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, patch: int, stride: int, fill: float) -> torch.Tensor:
    """Captum's definition written out window by window: the reference the batched code must match."""
    model = model.eval()
    n, _, h, w = images.shape
    total, count = torch.zeros(n, h, w), torch.zeros(h, w)
    with torch.no_grad():
        base = model(images).softmax(1).gather(1, targets[:, None])[:, 0]
        for y in range(0, h - patch + 1, stride):
            for x in range(0, w - patch + 1, stride):
                hidden = images.clone()
                hidden[:, :, y : y + patch, x : x + patch] = fill
                drop = base - model(hidden).softmax(1).gather(1, targets[:, None])[:, 0]
                total[:, y : y + patch, x : x + patch] += drop[:, None, None]
                count[y : y + patch, x : x + patch] += 1
    return total / count


class CornerReader(nn.Module):
    """A two-class toy model whose class-0 logit is the brightness of one 16x16 square."""

    def __init__(self, top: int, left: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(8.0))
        self.top, self.left = top, left

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = x[:, :, self.top : self.top + 16, self.left : self.left + 16].mean((1, 2, 3))
        return torch.stack([self.gain * seen, torch.zeros_like(seen)], 1)


def bright_corner_images(n: int = 6, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a bright top-left 16x16 corner, and that corner as a region mask."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g) * 0.5
    x[:, :, :16, :16] = 1.0
    region = torch.zeros(n, size, size, dtype=torch.bool)
    region[:, :16, :16] = True
    return x, region


def test_the_registry_names_gradcam_first_and_builds_each_explainer() -> None:
    assert explainers.NAMES[0] == "gradcam"
    for name in explainers.NAMES:
        assert explainers.get(name).name == name
    assert explainers.get("occlusion", patch=16, stride=4, infill=0.0).settings == {"patch": 16, "stride": 4, "infill": 0.0}


@pytest.mark.parametrize(
    ("name", "settings", "named"),
    [
        ("lime", {}, "unknown explainer 'lime'"),
        ("occlusion", {"patch": 0}, "patch"),
        ("occlusion", {"patch": -3}, "patch"),
        ("occlusion", {"stride": 0}, "stride"),
        ("occlusion", {"patch": 2.5}, "patch"),
        ("occlusion", {"infill": 1.5}, "infill"),
        ("occlusion", {"infill": -0.1}, "infill"),
        ("occlusion", {"infill": "median"}, "infill"),
        ("occlusion", {"window": 8}, "does not take"),
    ],
)
def test_bad_explainer_settings_get_one_line_naming_the_setting(name: str, settings: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named) as info:
        explainers.get(name, **settings)
    assert "\n" not in str(info.value)


def test_a_patch_larger_than_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="patch 80 is larger than the 64-px images"):
        explainers.get("occlusion", patch=80).check(64)


@pytest.mark.parametrize(("patch", "stride", "fill"), [(16, 8, 0.0), (24, 8, 0.5), (12, 13, 1.0)])
def test_occlusion_equals_the_naive_loop(trained_model, tiny_data, patch: int, stride: int, fill: float) -> None:
    x = tiny_data["test"].float_images(torch.arange(3))
    targets = torch.tensor([0, 2, 3])
    fast = explainers.get("occlusion", patch=patch, stride=stride, infill=fill).maps(trained_model, x, targets, batch_size=40)
    slow = naive_occlusion(trained_model, x, targets, patch, stride, fill)
    covered = ~slow.isnan()  # a stride that does not tile the image leaves pixels no window covers
    assert fast.shape == (3, 64, 64)
    assert torch.allclose(fast[covered], slow[covered], atol=1e-5)
    assert bool((fast[~covered] == 0).all())


def test_the_naive_comparison_can_fail(trained_model, tiny_data) -> None:
    """The same reference with the window off by a stride must not match: the equality test has teeth."""
    x = tiny_data["test"].float_images(torch.arange(2))
    targets = torch.tensor([1, 3])
    fast = explainers.get("occlusion", patch=16, stride=8, infill=0.0).maps(trained_model, x, targets)
    shifted = naive_occlusion(trained_model, x.roll(8, dims=-1), targets, 16, 8, 0.0).roll(-8, dims=-1)
    assert not torch.allclose(fast, shifted, atol=1e-5)


def test_occlusion_with_mean_infill_hides_each_image_with_its_own_mean(trained_model, tiny_data) -> None:
    x = tiny_data["test"].float_images(torch.arange(2))
    targets = torch.tensor([0, 0])
    fast = Occlusion(patch=16, stride=16, infill="mean").maps(trained_model, x, targets)
    for i in range(2):
        slow = naive_occlusion(trained_model, x[i : i + 1], targets[i : i + 1], 16, 16, float(x[i].mean()))
        assert torch.allclose(fast[i], slow[0], atol=1e-5)


def test_occlusion_finds_the_corner_a_model_reads_and_not_one_it_ignores() -> None:
    x, region = bright_corner_images()
    targets = torch.zeros(len(x), dtype=torch.long)
    occlusion = explainers.get("occlusion", patch=8, stride=4, infill=0.0)
    reads = confounder_precision_scores(occlusion.maps(CornerReader(0, 0), x, targets), region)
    ignores = confounder_precision_scores(occlusion.maps(CornerReader(40, 40), x, targets), region)
    assert float(reads.mean()) > 0.9
    assert float(ignores.mean()) < 0.1


def test_deletion_is_larger_for_the_true_map_than_for_a_shuffled_one() -> None:
    x, region = bright_corner_images()
    model = CornerReader(0, 0)
    targets = torch.zeros(len(x), dtype=torch.long)
    true_map = explainers.get("occlusion", patch=8, stride=4, infill=0.0).maps(model, x, targets)
    g = torch.Generator().manual_seed(1)
    shuffled = true_map.flatten(1)[:, torch.randperm(64 * 64, generator=g)].view_as(true_map)
    found = deletion_scores(model, x, true_map, targets, infill=0.0)
    missed = deletion_scores(model, x, shuffled, targets, infill=0.0)
    assert float(found.mean()) > float(missed.mean()) + 0.1


def test_top_pixels_keeps_five_percent_of_each_map() -> None:
    maps = torch.rand(3, 20, 20)
    chosen = top_pixels(maps, 5.0)
    assert chosen.flatten(1).sum(1).tolist() == [20, 20, 20]
    assert bool((maps[chosen].view(3, -1).amin(1) >= maps.flatten(1).sort(1).values[:, -20]).all())


def test_the_gradcam_explainer_is_the_analytic_gradcam(trained_model, tiny_data) -> None:
    from exbl_core.explainers.gradcam import gradcam

    x = tiny_data["test"].float_images(torch.arange(4))
    targets = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        reference = gradcam(trained_model.eval(), x, targets)
    assert torch.allclose(explainers.get("gradcam").maps(trained_model, x, targets), reference, atol=1e-5)


def test_for_display_scales_the_positive_part_to_one() -> None:
    maps = torch.tensor([[[-2.0, 1.0], [0.5, 0.0]]])
    assert torch.allclose(explainers.for_display(maps), torch.tensor([[[0.0, 1.0], [0.5, 0.0]]]), atol=1e-6)


def test_occlusion_matches_captum_when_it_is_installed(trained_model, tiny_data) -> None:
    captum = pytest.importorskip("captum.attr", reason="Captum is a benchmark dependency (requirements-bench.txt)")
    x = tiny_data["test"].float_images(torch.arange(2))
    targets = torch.tensor([3, 1])
    model = trained_model.eval()
    ours = explainers.get("occlusion", patch=16, stride=8, infill="mean").maps(model, x, targets)
    theirs = captum.Occlusion(lambda t: model(t).softmax(1)).attribute(
        x, sliding_window_shapes=(1, 16, 16), strides=(1, 8, 8), baselines=x.mean((1, 2, 3), keepdim=True), target=targets
    )[:, 0]
    assert float((ours - theirs).abs().max()) <= 1e-4


def test_usable_leaves_out_occlusion_where_its_window_does_not_fit() -> None:
    assert explainers.usable(128) == ("gradcam", "occlusion")
    assert explainers.usable(Occlusion().patch - 1) == ("gradcam",)
