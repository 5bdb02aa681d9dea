"""GradCAM (docs/design.md §5): the analytic path equals autograd, and gradients flow through it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exbl_core.explainers.gradcam import finish_cam, gradcam, has_gap_mlp_head, logits_and_cams, predict_with_cams


@pytest.fixture(scope="module")
def batch(tiny_data):
    x = tiny_data["test"].float_images()[:6]
    return x, tiny_data["test"].labels[:6]


def test_trained_fixture_is_really_trained(trained_model, tiny_data):
    # Guard for the agreement test: a few steps must have moved the head off its initial state.
    with torch.no_grad():
        logits = trained_model(tiny_data["train"].float_images())
    assert logits.std() > 0.05


@pytest.mark.parametrize("explain", ["true label", "other class"])
def test_analytic_and_autograd_cams_agree_to_1e_5_on_a_trained_model(trained_model, batch, explain):
    x, y = batch
    targets = y if explain == "true label" else (y + 1) % 4
    with torch.no_grad():
        analytic = gradcam(trained_model, x, targets, route="analytic")
    autograd = gradcam(trained_model, x, targets, route="autograd", create_graph=False).detach()
    assert analytic.abs().sum() > 0
    assert (analytic - autograd).abs().max() < 1e-5


def test_auto_takes_the_analytic_path_for_our_model(trained_model):
    assert has_gap_mlp_head(trained_model)
    assert not has_gap_mlp_head(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_cams_are_batched_at_input_resolution_non_negative_with_max_one(trained_model, batch):
    x, y = batch
    with torch.no_grad():
        cams = gradcam(trained_model, x, y)
    assert cams.shape == (6, 64, 64)
    assert cams.min() >= 0
    peaks = cams.flatten(1).amax(1)
    nonempty = peaks > 0
    assert nonempty.any()
    assert torch.allclose(peaks[nonempty], torch.ones(int(nonempty.sum())), atol=1e-5)


def test_default_target_is_the_predicted_class(trained_model, batch):
    x, _ = batch
    with torch.no_grad():
        preds = trained_model(x).argmax(1)
        assert torch.allclose(gradcam(trained_model, x), gradcam(trained_model, x, preds))
        logits, cams = logits_and_cams(trained_model, x)
    assert torch.equal(logits.argmax(1), preds)
    assert torch.allclose(cams, gradcam(trained_model, x, preds))


def test_loss_on_the_analytic_cam_reaches_the_backbone(trained_model, batch):
    x, y = batch
    trained_model.zero_grad()
    cams = gradcam(trained_model, x, y, route="analytic")
    weight = torch.rand(cams.shape[1:], generator=torch.Generator().manual_seed(0))
    (cams * weight).sum().backward()
    last = trained_model.features[-1][0].weight.grad
    earlier = trained_model.features[10].conv[0][0].weight.grad
    assert last is not None and last.abs().sum() > 0
    assert earlier is not None and earlier.abs().sum() > 0
    assert trained_model.classifier[0].weight.grad.abs().sum() > 0
    trained_model.zero_grad()


def test_autograd_path_with_create_graph_is_differentiable(trained_model, batch):
    x, y = batch
    trained_model.zero_grad()
    cams = gradcam(trained_model, x, y, route="autograd", create_graph=True)
    assert cams.requires_grad
    cams.sum().backward()
    assert trained_model.features[-1][0].weight.grad.abs().sum() > 0
    trained_model.zero_grad()


def test_no_grad_gives_detached_cams(trained_model, batch):
    x, y = batch
    with torch.no_grad():
        assert not gradcam(trained_model, x, y, route="autograd").requires_grad
        assert not gradcam(trained_model, x, y, route="analytic").requires_grad


def test_autograd_path_works_for_another_target_layer(trained_model, batch):
    x, y = batch
    cams = gradcam(trained_model, x, y, target_layer=trained_model.features[14]).detach()
    assert cams.shape == (6, 64, 64)
    assert cams.min() >= 0 and cams.max() <= 1


def test_predict_with_cams_gives_probabilities_and_predicted_class_cams(trained_model, batch):
    x, _ = batch
    probs, cams = predict_with_cams(trained_model, x, batch_size=4)
    assert probs.shape == (6, 4) and torch.allclose(probs.sum(1), torch.ones(6))
    with torch.no_grad():
        assert torch.allclose(
            cams, gradcam(trained_model, x, probs.argmax(1)), atol=1e-4
        )  # BatchNorm folded into the convolutions: equal up to float rounding


def test_finish_cam_applies_relu_upsamples_and_normalises():
    weighted = torch.tensor([[[-1.0, 2.0], [4.0, 0.0]]])
    cam = finish_cam(weighted, (2, 2))
    assert torch.allclose(cam, torch.tensor([[[0.0, 0.5], [1.0, 0.0]]]), atol=1e-6)
    assert finish_cam(weighted, (8, 8)).shape == (1, 8, 8)


def test_finish_cam_of_an_all_negative_map_is_empty_not_nan():
    cam = finish_cam(-torch.ones(1, 3, 3), (6, 6))
    assert torch.equal(cam, torch.zeros(1, 6, 6))
