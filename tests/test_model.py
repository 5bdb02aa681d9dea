"""The classifier (docs/design.md §4): MobileNetV2 with the paper's head, its backbone, freezing.

Where backbone weights come from (files, the ImageNet cache, the download) is tested in
test_weights.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNetV2, mobilenet_v2

from exbl_core.model import FROZEN_BLOCKS, DepthwiseConv2d, build_model, fold_batchnorm, set_depthwise_kind


def _frozen(model: nn.Module, blocks: slice) -> set[bool]:
    return {p.requires_grad for p in model.features[blocks].parameters()}


def test_head_is_1280_256_relu_dropout_half_then_classes():
    head = build_model(num_classes=4).classifier
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (1280, 256)
    assert head[2].p == 0.5
    assert (head[3].in_features, head[3].out_features) == (256, 4)


def test_grayscale_batch_gives_one_logit_per_class():
    model = build_model(num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 64, 64)).shape == (2, 4)


def test_gradcam_target_layer_has_1280_channels():
    model = build_model().eval()
    with torch.no_grad():
        feats = model.features(model.network_input(torch.rand(1, 1, 224, 224)))
    assert feats.shape == (1, 1280, 7, 7)


def test_random_weights_train_every_layer_by_default():
    assert _frozen(build_model(), slice(None)) == {True}


def test_freeze_true_freezes_exactly_the_first_six_blocks():
    model = build_model(freeze=True)
    assert FROZEN_BLOCKS == 6
    assert _frozen(model, slice(0, 6)) == {False}
    assert _frozen(model, slice(6, None)) == {True}
    assert {p.requires_grad for p in model.classifier.parameters()} == {True}


def test_a_backbone_loads_into_features_and_freezes_the_first_six_blocks():
    reference = mobilenet_v2()
    model = build_model(num_classes=4, backbone={f"features.{k}": v for k, v in reference.features.state_dict().items()})
    assert torch.equal(model.features[3].conv[0][0].weight, reference.features[3].conv[0][0].weight)
    assert torch.equal(model.features[-1][0].weight, reference.features[-1][0].weight)
    assert model.classifier[-1].out_features == 4
    assert _frozen(model, slice(0, 6)) == {False} and _frozen(model, slice(6, None)) == {True}


def test_input_is_normalised_inside_the_model():
    # Callers pass [0, 1] images: network_input() applies the ImageNet statistics itself.
    model = build_model()
    x = torch.full((1, 1, 4, 4), 0.485)
    assert model.network_input(x)[0, 0].abs().max() < 1e-6
    assert model.network_input(x).shape == (1, 3, 4, 4)


def test_output_stride_16_doubles_the_map_with_the_same_weights():
    # train mode: batch statistics give the random network's features a usable scale
    paper, fine = build_model().train(), build_model(output_stride=16).train()
    fine.load_state_dict(paper.state_dict())  # same parameters, so any checkpoint loads either way
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        coarse, dense = paper.features(paper.network_input(x)), fine.features(fine.network_input(x))
    assert coarse.shape[-2:] == (4, 4) and dense.shape[-2:] == (8, 8)
    assert not torch.allclose(paper.pooled(coarse), fine.pooled(dense))  # a different network, not a relabelled one


def test_an_unknown_output_stride_is_refused():
    with pytest.raises(ValueError, match="output_stride must be 16 or 32"):
        build_model(output_stride=8)


@pytest.mark.parametrize(("size", "stride", "dilation"), [(7, 1, 1), (8, 2, 1), (7, 2, 1), (6, 1, 2)])
def test_depthwise_convolution_matches_conv2d_to_the_second_derivative(size, stride, dilation):
    # rrr-lungs differentiates input gradients again; gradgradcheck compares both orders
    # of derivative with finite differences, for odd and even sizes after a stride.
    conv = DepthwiseConv2d(3, 3, 3, stride, dilation, dilation, groups=3, bias=False)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)

    def depthwise(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(conv, {"weight": w}, (x,))

    assert torch.allclose(depthwise(x, w), F.conv2d(x, w, None, stride, dilation, dilation, 3))
    assert torch.autograd.gradcheck(depthwise, (x, w))
    assert torch.autograd.gradgradcheck(depthwise, (x, w))


def test_every_depthwise_convolution_is_swapped_and_keeps_torchvisions_names():
    model = build_model()
    kinds = [type(m) for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(kinds) == 17 and set(kinds) == {DepthwiseConv2d}
    assert model.features.state_dict().keys() == MobileNetV2().features.state_dict().keys()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ours = model.eval()(x)
        torchs = set_depthwise_kind(copy.deepcopy(model), nn.Conv2d)(x)
    assert torch.allclose(ours, torchs, atol=1e-5)


def test_the_folded_inference_copy_predicts_what_the_model_does():
    # fold_batchnorm gives every convolution, the depthwise ones included, a bias that must be applied.
    model = build_model().eval()
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.running_mean.normal_()
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
        x = torch.rand(2, 1, 64, 64)
        assert torch.allclose(fold_batchnorm(model)(x), model(x), atol=1e-4)


def test_the_folded_copy_shares_no_tensor_and_leaves_the_model_as_it_was():
    # The copy is built without deepcopy, reusing modules' structure: it must still be a copy.
    model = build_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    mine = {id(t) for t in (*model.parameters(), *model.buffers())}
    assert not mine & {id(t) for t in (*folded.parameters(), *folded.buffers())}
    assert model.training and not folded.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 52
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out = folded(x)
        for p in model.parameters():  # training the model afterwards leaves the copy as it was
            p.add_(1.0)
        assert torch.equal(folded(x), out)


def test_the_depthwise_swap_leaves_initial_weights_and_gradients_as_torchs(monkeypatch):
    # A seed must give the same model as before the swap existed: the swap draws no random numbers.
    torch.manual_seed(0)
    ours = build_model().train()
    after_ours = torch.rand(4)
    monkeypatch.setattr("exbl_core.model.set_depthwise_kind", lambda model, kind=None: model)
    torch.manual_seed(0)
    torchs = build_model().train()
    assert torch.equal(torch.rand(4), after_ours)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), torchs.state_dict().values(), strict=True))
    x, y = torch.rand(4, 1, 64, 64), torch.tensor([0, 1, 2, 3])
    for model in (ours, torchs):
        torch.manual_seed(1)  # the same dropout mask
        F.cross_entropy(model(x), y).backward()
    for a, b in zip(ours.parameters(), torchs.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7)
