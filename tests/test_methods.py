"""Every refinement method honours one contract (STYLE.md): it runs a step on tiny inputs,
moves its own term, and refuses what it cannot work with, in one clear line."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from exbl_core.augment import hide_patches
from exbl_core.config import RefineConfig
from exbl_core.data import Split
from exbl_core.explainers.gradcam import analytic_cams, gradcam, head_pass
from exbl_core.methods import METHODS, Batch, Pair, check_feedback, get_method
from exbl_core.methods.counterexamples import paste_objective
from exbl_core.methods.region import avoid_region, outside_share, region_term
from exbl_core.methods.region_swap import swap_objective
from exbl_core.methods.rrr import input_gradient_penalty
from exbl_core.model import build_model
from exbl_core.training import _batch_losses, recalibrate_batchnorm

ALL = list(METHODS)


def _pick(model, train: Split) -> Pair:
    """The two images whose true-class CAMs differ most, so that the triplet has something to push."""
    model.eval()
    with torch.no_grad():
        cams = gradcam(model, train.float_images(), train.labels)
    model.train()
    flat = torch.nn.functional.normalize(cams.flatten(1), dim=1)
    distance = torch.cdist(flat, flat)  # empty CAMs are 1 from everything; two different ones can be up to sqrt(2)
    good, bad = divmod(int(distance.argmax()), len(flat))
    return Pair(good, bad)


@pytest.fixture()
def fresh_model():
    """Random weights: their CAMs are varied, unlike those of a model trained to one class."""
    torch.manual_seed(2)
    return build_model().train()


def test_the_registry_lists_the_papers_method_first_and_says_what_each_needs():
    assert ALL[0] == "exbl"
    assert {"exbl", "exbl-cam", "rrr-lungs", "gradcam-lungs"} <= set(ALL)
    assert any(m.feedback == "two-clicks" and m.name not in ("exbl", "exbl-cam") for m in METHODS.values())
    for m in METHODS.values():
        assert m.feedback in ("two-clicks", "masks") and m.summary and m.source


def test_an_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown method 'rrr'; choose one of exbl, exbl-cam"):
        get_method("rrr")
    with pytest.raises(ValueError, match="method='nope'"):
        RefineConfig(method="nope")


@pytest.mark.parametrize(
    "bad", [{"lr": float("inf")}, {"lambda_expl": -1.0}, {"margin": float("nan")}, {"shift": 0.7}, {"hide": 1.0}, {"hide_patch": 0}]
)
def test_settings_out_of_range_are_refused_naming_the_setting(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        RefineConfig(**bad)


def test_a_masks_method_refuses_data_without_lung_masks(tiny_data):
    train = tiny_data["train"]
    no_masks = replace(train, masks=torch.zeros_like(train.masks))
    for name in ALL:
        method = get_method(name)
        if method.needs_masks:
            with pytest.raises(ValueError, match=f"method '{name}' needs a lung mask"):
                check_feedback(method, no_masks)
        else:
            check_feedback(method, no_masks)


@pytest.mark.parametrize("name", ALL)
def test_each_method_runs_a_training_step_and_its_term_moves(name, fresh_model, tiny_data, monkeypatch):
    train = tiny_data["train"]
    cfg = RefineConfig(method=name)
    # The region methods need the bad CAM to look where the good one does not; on random-ish
    # weights that is not guaranteed, so they get a fixed region for this contract test.
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[:16, :16] = True
    monkeypatch.setattr("exbl_core.methods.region.avoid_region", lambda *a: region)
    # Running statistics as a trained model has them: with a fresh network's (mean 0,
    # variance 1) eval-mode activations fade to nothing, and so would rrr's input gradients.
    recalibrate_batchnorm(fresh_model, train, torch.device("cpu"))
    objective = get_method(name).build_objective(fresh_model, train, _pick(fresh_model, train), cfg)
    batch = Batch(train.float_images(slice(0, 8)), train.labels[:8], train.masks[:8])
    if objective.batch is not None:
        changed = objective.batch(batch, torch.Generator().manual_seed(0))
        assert not torch.equal(changed.x, batch.x), "the batch rewrite changed nothing"
        assert torch.equal(changed.y, batch.y)
        batch = changed
    before = _batch_losses(fresh_model, Batch(batch.x.clone(), batch.y, batch.masks), cfg, objective, training=True)
    assert torch.isfinite(before["loss"])
    before["loss"].backward()
    grads = [p.grad for p in fresh_model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    if objective.term is None:
        return
    # Steps on the term alone must lower it (measured with one dropout mask): the term really trains the weights.
    term_only = replace(cfg, lambda_expl=1.0)

    def term() -> float:
        torch.manual_seed(123)
        return float(_batch_losses(fresh_model, Batch(batch.x.clone(), batch.y, batch.masks), term_only, objective, True)["expl"].detach())

    start = term()
    adam = torch.optim.Adam(fresh_model.parameters(), lr=1e-3)
    for _ in range(8):
        out = _batch_losses(fresh_model, Batch(batch.x.clone(), batch.y, batch.masks), term_only, objective, training=True)
        adam.zero_grad()
        out["expl"].backward()
        adam.step()
    after = term()
    assert after < start, f"{name}: term {start:.4g} -> {after:.4g}"


def test_input_gradient_penalty_counts_only_pixels_outside_the_allowed_region():
    x = torch.zeros(1, 1, 2, 2, requires_grad=True)
    # log_softmax of [x00 * 1, 0] summed: d/dx00 = 1 - 2 * softmax_0 = 0 at x = 0; use a linear score instead.
    logits = torch.stack([(x * torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])).sum(), torch.tensor(0.0)]).view(1, 2)
    allowed = torch.tensor([[[True, False], [True, False]]])
    penalty = input_gradient_penalty(logits, x, allowed, create_graph=False)
    # d(sum_k log p_k)/dx = (1 - 2 p_0) * w with p_0 = 0.5 at x = 0: zero. Shift x so p_0 != 0.5.
    assert float(penalty) == pytest.approx(0.0)
    x2 = torch.full((1, 1, 2, 2), 0.1, requires_grad=True)
    w = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    logits2 = torch.stack([(x2 * w).sum(), torch.tensor(0.0)]).view(1, 2)
    p0 = torch.softmax(logits2.detach(), 1)[0, 0]
    expected = float(((1 - 2 * p0) ** 2) * (2.0**2 + 4.0**2))
    assert float(input_gradient_penalty(logits2, x2, allowed, create_graph=False)) == pytest.approx(expected, rel=1e-5)


def test_outside_share_is_the_cam_mass_outside_the_mask():
    cams = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    allowed = torch.tensor([[[True, False], [False, False]]])
    assert outside_share(cams, allowed).tolist() == pytest.approx([0.75])
    assert outside_share(torch.zeros(1, 2, 2), allowed).tolist() == [0.0]


def test_counterexamples_paste_only_into_other_classes_and_only_inside_the_region():
    patch = torch.ones(1, 4, 4)
    alpha = torch.zeros(4, 4)
    alpha[0, 0] = 1.0
    objective = paste_objective(patch, alpha, source_label=3, rate=1.0, jitter=0.0)
    batch = Batch(torch.zeros(3, 1, 4, 4), torch.tensor([0, 3, 1]))
    out = objective.batch(batch, torch.Generator().manual_seed(0))
    assert out.x[:, 0, 0, 0].tolist() == [1.0, 0.0, 1.0]  # class 3 (the bad exemplar's) is left alone
    assert float(out.x.sum()) == 2.0  # nothing outside the region


def test_jittered_counterexamples_vary_from_image_to_image_and_stay_near_the_region():
    patch = torch.rand(1, 32, 32)
    alpha = torch.zeros(32, 32)
    alpha[2:10, 2:10] = 1.0  # a shoulder in the upper left corner
    objective = paste_objective(patch, alpha, source_label=3, rate=1.0, jitter=0.08)
    batch = Batch(torch.zeros(16, 1, 32, 32), torch.tensor([0] * 15 + [3]))
    out = objective.batch(batch, torch.Generator().manual_seed(0)).x
    assert float(out[15].abs().sum()) == 0.0  # the bad exemplar's class gets no paste
    pasted = out[:15, 0] > 0
    assert len({tuple(p.nonzero()[0].tolist()) for p in pasted}) > 1  # not one paste repeated
    # within the largest shift and scale change, mirrored or not: the two upper corners only
    assert not pasted[:, 16:, :].any()
    assert all(bool(p.any()) for p in pasted)


def test_hide_and_seek_hides_whole_grid_cells_with_the_images_mean_and_keeps_the_rest():
    x = torch.rand(64, 1, 10, 12)
    out = hide_patches(x, 0.5, 4, torch.Generator().manual_seed(0))
    hidden = out != x
    cells = hidden[:, 0, ::4, ::4]  # a cell's first pixel says whether the cell was hidden
    whole = cells.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :10, :12]
    assert torch.equal(hidden[:, 0], whole), "a 4x4 cell (cut at the border) is hidden whole or not at all"
    assert 0.4 < cells.float().mean() < 0.6
    mean = x.mean((1, 2, 3), keepdim=True).expand_as(x)
    assert torch.equal(out[hidden], mean[hidden])
    assert torch.equal(hide_patches(x, 0.0, 4, torch.Generator()), x)


def test_region_swap_refills_only_the_region_and_from_other_images_of_the_batch():
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 4, 4).clone()  # image i is all i
    alpha = torch.zeros(4, 4)
    alpha[0, :] = 1.0  # the region: the top row
    out = swap_objective(alpha).batch(Batch(x, torch.tensor([3, 3, 0, 1, 2, 0])), torch.Generator().manual_seed(1))
    assert torch.equal(out.x[:, :, 1:], x[:, :, 1:])  # the lungs and everything outside the region stay
    assert out.y.tolist() == [3, 3, 0, 1, 2, 0]
    donors = out.x[:, 0, 0, 0].long()
    assert bool((out.x[:, 0, 0] == donors.view(-1, 1).float()).all())  # one donor fills each image's whole row
    assert sorted(donors.tolist()) == list(range(6))  # every image gives its region to exactly one other
    assert int((donors != torch.arange(6)).sum()) >= 4  # and most images get another's


def test_the_avoid_region_is_where_the_bad_exemplars_occlusion_map_points_outside_its_lungs(trained_model, tiny_data, monkeypatch):
    train = tiny_data["train"]
    bad = torch.zeros(64, 64)
    bad[:10, :10] = 1.0  # a shoulder
    bad[40:, 22:42] = 0.8  # and the lungs too
    monkeypatch.setattr("exbl_core.methods.region.bad_map", lambda model, split, pick: bad)
    masks = torch.zeros_like(train.masks)
    masks[1, 40:, 22:42] = True  # the bad exemplar's lungs
    region = avoid_region(trained_model, replace(train, masks=masks), Pair(0, 1), grow=0, mirror=False)
    assert region[:10, :10].all() and not region[40:, 22:42].any() and int(region.sum()) == 100
    without_masks = avoid_region(trained_model, replace(train, masks=masks), Pair(0, 1), grow=0, use_masks=False, mirror=False)
    assert int(without_masks.sum()) == 100 + 20 * 24
    both_sides = avoid_region(trained_model, replace(train, masks=masks), Pair(0, 1), grow=0)
    assert both_sides[:10, :10].all() and both_sides[:10, -10:].all() and int(both_sides.sum()) == 200
    inside = torch.zeros(64, 64)
    inside[40:, 22:42] = 1.0
    monkeypatch.setattr("exbl_core.methods.region.bad_map", lambda model, split, pick: inside)
    with pytest.raises(ValueError, match="occlusion map points only inside its lungs"):
        avoid_region(trained_model, replace(train, masks=masks), Pair(0, 1))


def test_the_bad_map_is_the_bad_exemplars_occlusion_of_its_true_class(trained_model, tiny_data):
    from exbl_core import explainers
    from exbl_core.methods.region import bad_map

    train = tiny_data["train"]
    got = bad_map(trained_model, train, Pair(0, 3))
    x = train.float_images(torch.tensor([3]))
    want = explainers.for_display(explainers.get("occlusion").maps(trained_model.eval(), x, train.labels[3:4]))[0]
    assert torch.allclose(got, want, atol=1e-6)
    assert float(got.max()) == pytest.approx(1.0, abs=1e-4) or float(got.max()) == 0.0


def test_counterexamples_cam_scores_the_cam_share_inside_the_pasted_region(trained_model, tiny_data):
    train = tiny_data["train"]
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[:16, :16] = True  # a shoulder
    x, y = train.float_images(slice(0, 4)), train.labels[:4]
    state = head_pass(trained_model, x)
    cams = analytic_cams(trained_model, state, y, x.shape[-2:])
    inside = ((cams * region).flatten(1).sum(1) / cams.flatten(1).sum(1)).detach()
    got = region_term(region)(trained_model, Batch(x, y), state, False)["expl"].detach()
    assert float(got) == pytest.approx(float(inside.mean()), rel=1e-4)
    assert 0.0 < float(got) < 1.0
