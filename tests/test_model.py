"""The classifier (DESIGN.md §4): MobileNetV2 with the paper's head, offline weights, freezing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from exbl_core import model as model_module
from exbl_core.model import FROZEN_BLOCKS, build_model


def _frozen(model: nn.Module, blocks: slice) -> set[bool]:
    return {p.requires_grad for p in model.features[blocks].parameters()}


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, and no way to download: any attempt fails the test."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(*_a, **_k):
        raise AssertionError("build_model tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


def test_head_is_1280_256_relu_dropout_half_then_classes():
    head = build_model(num_classes=4, pretrained=False).classifier
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
    assert _frozen(build_model(pretrained=False), slice(None)) == {True}


def test_freeze_true_freezes_exactly_the_first_six_blocks():
    model = build_model(freeze=True)
    assert FROZEN_BLOCKS == 6
    assert _frozen(model, slice(0, 6)) == {False}
    assert _frozen(model, slice(6, None)) == {True}
    assert {p.requires_grad for p in model.classifier.parameters()} == {True}


def test_pretrained_offline_without_cached_weights_falls_back_to_random_with_one_message(empty_hub, caplog):
    with caplog.at_level(logging.INFO, logger=model_module.__name__):
        model = build_model(num_classes=4, pretrained=True)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "random weights" in warnings[0].getMessage()
    assert _frozen(model, slice(None)) == {True}, "random filters are not frozen"


def test_pretrained_uses_cached_imagenet_weights_and_freezes_early_blocks(empty_hub):
    reference = mobilenet_v2()
    cached = empty_hub / "checkpoints" / Path(MobileNet_V2_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = build_model(num_classes=4, pretrained=True)
    assert torch.equal(model.features[0][0].weight, reference.features[0][0].weight)
    assert torch.equal(model.features[-1][0].weight, reference.features[-1][0].weight)
    assert _frozen(model, slice(0, 6)) == {False} and _frozen(model, slice(6, None)) == {True}


def test_local_weights_file_loads_the_backbone_but_not_the_head(tmp_path):
    reference = mobilenet_v2()
    path = tmp_path / "backbone.pt"
    torch.save(reference.state_dict(), path)
    model = build_model(num_classes=4, weights_path=path)
    assert torch.equal(model.features[3].conv[0][0].weight, reference.features[3].conv[0][0].weight)
    assert model.classifier[-1].out_features == 4
    assert _frozen(model, slice(0, 6)) == {False}


def test_local_weights_file_of_another_network_is_refused_naming_it(tmp_path):
    path = tmp_path / "not_mobilenet.pt"
    torch.save(nn.Linear(3, 3).state_dict(), path)
    with pytest.raises(ValueError, match=r"not_mobilenet\.pt: not a MobileNetV2"):
        build_model(weights_path=path)


def test_input_is_normalised_inside_the_model():
    # Callers pass [0, 1] images: prepare() applies the ImageNet statistics itself.
    model = build_model()
    x = torch.full((1, 1, 4, 4), 0.485)
    assert model.prepare(x)[0, 0].abs().max() < 1e-6
    assert model.prepare(x).shape == (1, 3, 4, 4)
