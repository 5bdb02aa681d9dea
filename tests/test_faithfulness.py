"""Scoring explainers on the same images, the disagreement sentence and the suggestion read from occlusion."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from exbl_core import cli, faithfulness, picking, runs
from exbl_core.explainers.gradcam import predict_with_cams


def test_the_sample_is_fixed_by_the_seed_sorted_and_at_most_a_quarter_of_a_small_split():
    a, b = faithfulness.sample_indices(400, seed=3), faithfulness.sample_indices(400, seed=3)
    assert torch.equal(a, b) and len(a) == faithfulness.SAMPLE
    assert torch.equal(a, a.sort().values) and len(set(a.tolist())) == len(a)
    assert not torch.equal(a, faithfulness.sample_indices(400, seed=4))
    assert len(faithfulness.sample_indices(40, seed=0)) == 10
    assert len(faithfulness.sample_indices(2, seed=0)) == 1


def test_score_explainers_reports_each_explainer_on_the_same_images(trained_model, tiny_data):
    split = tiny_data["shortcut_test"]
    idx = torch.arange(6)
    scores = faithfulness.score_explainers(trained_model.eval(), split, idx)
    assert list(scores) == ["gradcam", "occlusion"]
    for s in scores.values():
        assert s["n"] == 6 and 0.0 <= s["activation_precision"] <= 1.0
        assert "child_cp" in s and "n_child_vp" in s
    assert "child_cp" not in faithfulness.score_explainers(trained_model.eval(), replace(split, regions=None), idx)["gradcam"]


def test_scores_from_the_splits_inference_equal_scores_computed_afresh(trained_model, tiny_data):
    # evaluate hands over the probabilities and GradCAMs it already has instead of computing them again.
    # Inferred in the same batch as here: another batch can round the tiny model's 2x2 CAMs differently,
    # and their ties then pick other top pixels (on the demo's models evaluate's numbers stayed the same).
    split = tiny_data["shortcut_test"]
    idx = torch.tensor([1, 4, 5, 9])
    seen = faithfulness.score_explainers(trained_model, split, idx, seen=predict_with_cams(trained_model, split.float_images(idx)))
    assert seen == faithfulness.score_explainers(trained_model, split, idx)


@pytest.mark.parametrize(("gradcam", "occlusion", "says"), [(0.0, 0.72, True), (0.7, 0.1, True), (0.2, 0.45, False), (None, 0.9, False)])
def test_the_disagreement_sentence_appears_only_when_child_cps_are_more_than_0_3_apart(gradcam, occlusion, says):
    entry = {"by_explainer": {"gradcam": {"child_cp": gradcam}, "occlusion": {"child_cp": occlusion}}}
    sentence = faithfulness.disagreement(entry)
    assert (sentence is not None) == says
    if says:
        assert f"{occlusion:.2f}" in sentence and f"{gradcam:.2f}" in sentence and "\n" not in sentence
    assert faithfulness.disagreement({}) is None


def test_lung_share_counts_the_positive_mass_inside_the_mask():
    maps = torch.tensor([[[1.0, 3.0], [-5.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    masks = torch.tensor([[[True, False], [True, True]]] * 2)
    assert faithfulness.lung_share(maps, masks).tolist() == pytest.approx([0.25, 0.0])


def test_faithful_pick_takes_the_least_lung_map_as_bad_and_the_same_class_most_lung_map_as_good(trained_model, tiny_data, monkeypatch):
    train = tiny_data["train"]
    monkeypatch.setattr(faithfulness, "predicted", lambda model, x: train.labels[: len(x)] if len(x) == len(train) else train.labels[:0])
    shares = {}

    def fake_share(maps, masks):
        out = torch.linspace(0.9, 0.1, len(maps))  # the last explained image has the least lung mass
        shares["n"] = len(maps)
        return out

    monkeypatch.setattr(faithfulness, "lung_share", fake_share)
    monkeypatch.setattr(faithfulness.explainers, "get", lambda name: type("E", (), {"maps": lambda self, m, x, t: x[:, 0]})())
    good, bad, info = faithfulness.faithful_pick(trained_model, train, per_class=3)
    assert info["explained"] == shares["n"] == 12  # 3 per class, all correctly classified here
    assert train.labels[good] == train.labels[bad] and good != bad
    assert info["bad_lung_share"] == pytest.approx(0.1) and info["good_lung_share"] > info["bad_lung_share"]
    with pytest.raises(ValueError, match="has none"):
        faithfulness.faithful_pick(trained_model, replace(train, masks=None))


def test_the_automatic_pick_on_occlusion_maps_records_what_it_read(run_copy, capsys):
    """``pick --pick-from occlusion`` reads occlusion maps, and pair.json and the console say so."""
    assert cli.main(["pick", "--run", str(run_copy), "--pick-from", "occlusion"]) == 0
    pick = json.loads((run_copy / runs.PAIR).read_text())
    assert pick["explainer"] == "occlusion" and pick["rule"] == picking.FAITHFUL_PICK_RULE
    assert pick["found"]["bad_lung_share"] <= pick["found"]["good_lung_share"]
    assert pick["good"]["class"] == pick["bad"]["class"] and pick["good"]["index"] != pick["bad"]["index"]
    assert "of its occlusion map on the lungs" in capsys.readouterr().out
