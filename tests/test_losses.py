"""The eXBL loss (docs/design.md §6) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from exbl_core.losses import exbl_loss, explanation, triplet_terms


def test_explanation_is_gray_times_cam_flattened():
    images = torch.tensor([[[[0.5, 1.0], [0.0, 0.25]]], [[[1.0, 1.0], [1.0, 1.0]]]])  # [2,1,2,2]
    cams = torch.tensor([[[1.0, 0.5], [1.0, 0.0]], [[0.0, 0.2], [0.4, 1.0]]])
    assert torch.allclose(explanation(images, cams), torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.2, 0.4, 1.0]]))


def test_explanation_accepts_images_without_a_channel_axis():
    images = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])
    assert explanation(images, torch.ones(1, 2, 2)).tolist() == [[0.5, 1.0, 0.0, 0.25]]


def test_explanation_cam_leaves_the_image_out_and_unknown_kinds_are_refused():
    images = torch.tensor([[[[0.5, 1.0], [0.0, 0.25]]]])
    cams = torch.tensor([[[1.0, 0.5], [1.0, 0.0]]])
    assert explanation(images, cams, "cam").tolist() == [[1.0, 0.5, 1.0, 0.0]]
    with pytest.raises(ValueError, match="unknown explanation 'gray'"):
        explanation(images, cams, "gray")


def test_explanation_refuses_cams_of_another_size():
    with pytest.raises(ValueError, match="differ in size"):
        explanation(torch.rand(1, 1, 4, 4), torch.rand(1, 2, 2))


# C_good = 0, C_bad = (3, 4, 0, 0): they are 5 apart.
C_GOOD = torch.zeros(4)
C_BAD = torch.tensor([3.0, 4.0, 0.0, 0.0])


def test_euclidean_terms_by_hand():
    expl = torch.stack([C_GOOD, C_BAD, torch.tensor([0.0, 4.0, 0.0, 0.0])])
    # l = max(d_good - d_bad + 1, 0): (0 - 5 + 1) -> 0; (5 - 0 + 1) = 6; (4 - 3 + 1) = 2
    assert triplet_terms(expl, C_GOOD, C_BAD, margin=1.0).tolist() == pytest.approx([0.0, 6.0, 2.0])


def test_loss_is_the_batch_mean_of_the_terms():
    expl = torch.stack([C_GOOD, C_BAD, torch.tensor([0.0, 4.0, 0.0, 0.0])])
    assert float(exbl_loss(expl, C_GOOD, C_BAD, margin=1.0)) == pytest.approx(8 / 3)


def test_margin_enters_additively():
    expl = torch.tensor([[0.0, 4.0, 0.0, 0.0]])
    assert float(exbl_loss(expl, C_GOOD, C_BAD, margin=0.0)) == pytest.approx(1.0)
    assert float(exbl_loss(expl, C_GOOD, C_BAD, margin=2.5)) == pytest.approx(3.5)


def test_exemplars_may_be_given_as_images():
    expl = torch.tensor([[0.0, 4.0, 0.0, 0.0]])
    assert float(exbl_loss(expl, C_GOOD.view(2, 2), C_BAD.view(2, 2))) == pytest.approx(2.0)


def test_normalized_distance_by_hand():
    good, bad = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    expl = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    # unit vectors: e1 -> (0 - sqrt2 + 1)+ = 0; e3 -> sqrt2 - sqrt2 + 1 = 1; e2 -> sqrt2 - 0 + 1
    terms = triplet_terms(expl, good, bad, margin=1.0, distance="normalized")
    assert terms.tolist() == pytest.approx([0.0, 1.0, 1.0 + math.sqrt(2)])
    assert float(exbl_loss(expl, good, bad, distance="normalized")) == pytest.approx((2.0 + math.sqrt(2)) / 3)


def test_normalized_distance_ignores_the_scale_of_explanations_and_euclidean_does_not():
    good, bad = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    expl = torch.tensor([[0.3, 0.7, 0.1, 0.0]])
    n1 = triplet_terms(expl, good, bad, distance="normalized")
    n2 = triplet_terms(10 * expl, good, bad, distance="normalized")
    assert torch.allclose(n1, n2)
    assert not torch.allclose(triplet_terms(expl, good, bad), triplet_terms(10 * expl, good, bad))


def test_unknown_distance_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="euclidean, normalized"):
        exbl_loss(torch.zeros(1, 4), C_GOOD, C_BAD, distance="cosine")


def test_loss_gradient_pulls_towards_good_and_away_from_bad():
    expl = torch.tensor([[0.0, 4.0, 0.0, 0.0]], requires_grad=True)
    exbl_loss(expl, C_GOOD, C_BAD).backward()
    # d/dE (|E - G| - |E - B|) = (E - G)/|E - G| - (E - B)/|E - B| = (0,1,0,0) - (-1,0,0,0)
    assert expl.grad[0].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
