"""experiments.gradient_masking: the same patients with and without epiphyses, and what a model makes of them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exbl_core.data import VIRAL_PNEUMONIA
from exbl_core.methods.rrr import input_gradient_penalty
from exbl_core.synthetic import SyntheticConfig
from experiments.gradient_masking import FIGURES, masking_scores, patients_with_and_without

CFG = SyntheticConfig(size=64, n_train=1, n_val=1, n_test=6, seed=3)


class Template(nn.Module):
    """Logit of Viral Pneumonia = ``scale`` x (<x, template> - ``offset``); the other logits 0."""

    def __init__(self, template: torch.Tensor, scale: float, offset: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("template", template.float())
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scale * ((x[:, 0] * self.template).flatten(1).sum(1) - self.offset)
        return torch.cat([torch.zeros(len(x), VIRAL_PNEUMONIA), z[:, None]], 1)


@pytest.fixture(scope="module")
def patients():
    return patients_with_and_without(CFG)


def test_the_same_patients_are_drawn_with_and_without_child_anatomy(patients):
    kids, adults = patients
    assert kids.child.all() and not adults.child.any()
    assert torch.equal(kids.labels, adults.labels) and torch.equal(kids.masks, adults.masks)
    assert torch.equal(kids.regions, adults.regions)
    assert torch.equal(kids.images[:, 0][kids.masks], adults.images[:, 0][adults.masks]), "the lungs are the same"
    changed = (kids.images != adults.images)[:, 0].flatten(1).any(1)
    assert changed.all(), "every pair differs by the epiphyses"


def test_a_model_blind_to_everything_outside_the_lungs_has_no_shortcut_to_mask(patients):
    kids, adults = patients
    lungs_of_all = kids.masks.all(0)
    assert lungs_of_all.sum() > 20
    scores = masking_scores(Template(lungs_of_all / lungs_of_all.sum(), scale=50.0), kids, adults)
    assert set(scores) == set(FIGURES)
    assert scores["effect"] == 0.0 and scores["linear"] == 0.0 and scores["flips"] == 0.0
    assert scores["penalty"] == 0.0 and scores["grad_outside"] == 0.0 and scores["grad_region"] == 0.0


def test_a_model_that_detects_the_epiphyses_shows_it_in_effect_flips_and_gradient(patients):
    kids, adults = patients
    shoulders = kids.regions.any(0) & ~kids.masks.any(0)
    # A matched filter for the epiphyses, blind to brightness, with its threshold between
    # the two groups: the simplest model that uses the shortcut and nothing else.
    pattern = (kids.float_images() - adults.float_images())[:, 0].mean(0) * shoulders
    pattern = (pattern - pattern[shoulders].mean()) * shoulders
    offset = float(sum((s.float_images()[:, 0] * pattern).sum((1, 2)).mean() for s in (kids, adults))) / 2
    scores = masking_scores(Template(pattern, scale=20.0 / float(pattern.pow(2).sum()), offset=offset), kids, adults)
    assert scores["grad_outside"] == pytest.approx(1.0)
    assert 0.5 < scores["grad_region"] <= 1.0
    assert scores["effect"] > 1.0 and scores["linear"] > 0
    assert scores["vp_child"] > 0.7 and scores["vp_adult"] < 0.3 and scores["flips"] > 0.5


def test_the_penalty_is_the_one_rrr_lungs_trains_on(trained_model):
    cfg = SyntheticConfig(size=64, n_train=1, n_val=1, n_test=3, seed=5)
    kids, adults = patients_with_and_without(cfg)
    scores = masking_scores(trained_model, kids, adults, batch=5)
    x = kids.float_images().requires_grad_(True)
    with torch.enable_grad():
        expected = input_gradient_penalty(trained_model(x), x, kids.masks, create_graph=False)
    assert scores["penalty"] == pytest.approx(float(expected), rel=1e-4)
    assert 0.0 <= scores["grad_region"] <= scores["grad_outside"] <= 1.0
    assert not trained_model.training, "the model is given back in the mode it came in"
