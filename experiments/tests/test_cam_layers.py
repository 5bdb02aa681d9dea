"""experiments.cam_layers: child CP and AP at other GradCAM layers, on the definitions the runs use."""

from __future__ import annotations

import pytest
import torch

from exbl_core.data import CLASSES, VIRAL_PNEUMONIA
from exbl_core.explainers.gradcam import gradcam
from exbl_core.metrics import evaluate_predictions
from experiments.cam_layers import PAPER_LAYER, layer_cams, layer_scores


def test_the_papers_layer_scores_as_the_runs_metrics_do(trained_model, tiny_data):
    test, shortcut = tiny_data["test"], tiny_data["shortcut_test"]
    scores = layer_scores(trained_model, test, shortcut, [PAPER_LAYER, 6])
    assert set(scores) == {PAPER_LAYER, 6}
    # The runs' metrics take the analytic GradCAM (the default); the bench takes autograd
    # GradCAM at features[18]: the same maps, up to float rounding, for the same predictions.
    reports = {}
    for name, split in (("test", test), ("shortcut_test", shortcut)):
        with torch.no_grad():
            preds = trained_model(split.float_images()).argmax(1)
            cams = gradcam(trained_model, split.float_images(), preds)
        reports[name] = evaluate_predictions(split.labels, preds, cams, split.masks, regions=split.regions, child=split.child)
    paper = scores[PAPER_LAYER]
    assert paper["n_child_vp"] == reports["shortcut_test"]["n_child_vp"] > 0
    assert paper["child_cp"] == pytest.approx(reports["shortcut_test"]["child_cp"], abs=1e-3)
    others = [reports["test"]["ap_by_class"][c] for c in CLASSES if c != CLASSES[VIRAL_PNEUMONIA]]
    assert paper["ap_other"] == pytest.approx(sum(others) / 3, abs=1e-3)
    assert 0.0 <= scores[6]["child_cp"] <= 1.0 and 0.0 <= scores[6]["ap_other"] <= 1.0


def test_the_papers_layer_is_the_cam_every_run_shows(trained_model, tiny_data):
    x = tiny_data["test"].float_images()
    with torch.no_grad():
        preds = trained_model(x).argmax(1)
        shown = gradcam(trained_model, x, preds)
    assert torch.allclose(layer_cams(trained_model, x, preds, trained_model.features[PAPER_LAYER]), shown, atol=1e-4)
    assert not torch.allclose(layer_cams(trained_model, x, preds, trained_model.features[PAPER_LAYER - 2]), shown, atol=1e-4)
