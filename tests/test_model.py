"""The classifier (DESIGN.md §4): MobileNetV2 with the paper's head, its backbone, freezing.

Where backbone weights come from (files, the ImageNet cache, the download) is tested in
test_weights.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2

from exbl_core.model import FROZEN_BLOCKS, build_model


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
        feats = model.features(model.prepare(torch.rand(1, 1, 224, 224)))
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
    # Callers pass [0, 1] images: prepare() applies the ImageNet statistics itself.
    model = build_model()
    x = torch.full((1, 1, 4, 4), 0.485)
    assert model.prepare(x)[0, 0].abs().max() < 1e-6
    assert model.prepare(x).shape == (1, 3, 4, 4)


def test_output_stride_16_doubles_the_map_with_the_same_weights():
    # train mode: batch statistics give the random network's features a usable scale
    paper, fine = build_model().train(), build_model(output_stride=16).train()
    fine.load_state_dict(paper.state_dict())  # same parameters, so any checkpoint loads either way
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        coarse, dense = paper.features(paper.prepare(x)), fine.features(fine.prepare(x))
    assert coarse.shape[-2:] == (4, 4) and dense.shape[-2:] == (8, 8)
    assert not torch.allclose(paper.pooled(coarse), fine.pooled(dense))  # a different network, not a relabelled one


def test_an_unknown_output_stride_is_refused():
    with pytest.raises(ValueError, match="output_stride must be 16 or 32"):
        build_model(output_stride=8)
