"""Refinement in bf16 autocast (``TrainConfig.precision``): fp32 stays as it was, bf16 trains and says so."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from exbl_core import config, files, run_data, runs
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.data import CLASSES
from exbl_core.explainers.gradcam import INFERENCE_BATCH, analytic_cams, head_pass, predict_with_cams
from exbl_core.losses import explanation, triplet_terms
from exbl_core.methods.exbl import Exemplars, triplet_objective
from exbl_core.metrics import evaluate_predictions
from exbl_core.model import DepthwiseConv2d, build_model
from exbl_core.training import fit

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


def _depthwise_grads(conv: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, autocast: bool) -> tuple:
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast(**BF16, enabled=autocast):
        out = torch.func.functional_call(conv, {"weight": w}, (x,))
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out, x.grad, w.grad


@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 1), (1, 2)])
def test_depthwise_gradients_in_fp32_are_torchs_and_bf16_autocast_gives_fp32_gradients_close_to_them(stride, dilation):
    torch.manual_seed(0)
    x, w = torch.randn(2, 8, 9, 9), torch.randn(8, 1, 3, 3)
    ours = DepthwiseConv2d(8, 8, 3, stride, dilation, dilation, groups=8, bias=False)
    torchs = torch.nn.Conv2d(8, 8, 3, stride, dilation, dilation, groups=8, bias=False)
    out, gx, gw = _depthwise_grads(ours, x, w, autocast=False)
    ref_out, ref_gx, ref_gw = _depthwise_grads(torchs, x, w, autocast=False)
    assert torch.equal(out, ref_out)
    assert torch.allclose(gx, ref_gx, atol=1e-6) and torch.allclose(gw, ref_gw, atol=1e-6)

    out16, gx16, gw16 = _depthwise_grads(ours, x, w, autocast=True)
    assert out16.dtype == torch.bfloat16
    assert gx16.dtype == torch.float32 and gw16.dtype == torch.float32, "each gradient in its input's dtype"
    # bf16 keeps 8 bits of mantissa: within a few percent of the fp32 gradient's scale.
    assert (gx16 - ref_gx).abs().max() <= 0.03 * ref_gx.abs().max()
    assert (gw16 - ref_gw).abs().max() <= 0.03 * ref_gw.abs().max()


def test_the_exbl_loss_under_bf16_autocast_stays_fp32_and_moves_the_head_as_fp32_does(trained_model, tiny_data):
    # Deep in a train-mode network bf16's rounding adds up (on this tiny model the first block's gradient
    # keeps a cosine of about 0.5 with fp32's); the head and the last block, which the loss moves most, agree.
    model = build_model(num_classes=len(CLASSES))
    model.load_state_dict(trained_model.state_dict())
    model.train()
    train = tiny_data["train"]
    x, y = train.float_images(slice(0, 16)), train.labels[:16]
    c_good, c_bad = explanation(x[:1], torch.ones(1, *x.shape[-2:])), explanation(x[1:2], torch.zeros(1, *x.shape[-2:]))
    losses, grads = {}, {}
    for bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout mask
        with torch.autocast(**BF16, enabled=bf16):
            state = head_pass(model, x)
            terms = triplet_terms(explanation(x, analytic_cams(model, state, y, x.shape[-2:])), c_good, c_bad)
            loss = F.cross_entropy(state.logits, y) + terms.mean()
        assert loss.dtype == terms.dtype == torch.float32, "autocast keeps the losses and distances in fp32"
        loss.backward()
        grads[bf16] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads[bf16].values())
        losses[bf16] = float(loss.detach())
    assert losses[True] == pytest.approx(losses[False], rel=0.05)
    for name in ("classifier.0.weight", "classifier.3.weight", "features.18.0.weight"):
        assert F.cosine_similarity(grads[True][name].flatten(), grads[False][name].flatten(), dim=0) > 0.9, name


def test_precision_is_checked_and_auto_is_bf16_only_on_a_cpu_that_computes_it(monkeypatch):
    with pytest.raises(ValueError, match="precision='fp16'"):
        TrainConfig(precision="fp16")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(config, "bf16_native", lambda native=native: native)
        assert TrainConfig(precision="auto").compute_dtype(cpu) == (torch.bfloat16 if native else torch.float32)
        assert TrainConfig(precision="auto").compute_dtype(cuda) == torch.float32
        assert TrainConfig(precision="bf16").compute_dtype(cpu) == torch.bfloat16
        assert TrainConfig().compute_dtype(cpu) == torch.float32


def test_fp32_settings_write_what_they_wrote_before_bf16_existed_and_other_precisions_are_recorded():
    assert "precision" not in TrainConfig().to_dict(), "old config.json files and the shipped manifest keep matching"
    assert TrainConfig(precision="auto").to_dict()["precision"] == "auto"
    assert TrainConfig(**TrainConfig(precision="bf16").to_dict()) == TrainConfig(precision="bf16")
    with pytest.raises(TypeError, match="precision is 16"):
        config.check_types(TrainConfig, {"precision": 16})


def test_a_config_json_without_precision_refines_in_fp32(run_copy):
    recorded = files.read_json(run_copy / runs.CONFIG)
    assert "precision" not in recorded["refine"]
    assert run_data.train_config(runs.open_run(run_copy), "refine").precision == "fp32"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_epoch_says_what_it_computed_in_and_a_bf16_refinement_trains(micro_data, precision):
    torch.manual_seed(0)
    model = build_model(num_classes=len(CLASSES))
    size = micro_data["train"].images.shape[-1]
    objective = triplet_objective(Exemplars(torch.ones(size * size), torch.zeros(size * size)), "gray_cam", "euclidean", 1.0)
    events: list[dict] = []
    cfg = replace(RefineConfig(epochs=1, lr=1e-3, batch_size=8), precision=precision)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(model, micro_data["train"], micro_data["val"], cfg, objective, on_event=events.append)
    assert result.status == "done"
    end = next(e for e in events if e["type"] == "epoch_end")
    assert end["precision"] == precision and json.dumps(end)
    assert all(isinstance(end[k], float) and end[k] == end[k] for k in ("loss", "expl", "val_loss", "val_ap"))
    assert all(v.dtype == before[k].dtype for k, v in model.state_dict().items()), "the weights stay in their dtype"
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_inference_in_smaller_batches_gives_the_same_probabilities_cams_and_metrics(trained_model, tiny_data):
    # The inference batch was cut from 64 to 16 for speed: every number evaluate writes stays as it was.
    test, shortcut = tiny_data["test"], tiny_data["shortcut_test"]
    x = torch.cat([test.float_images(), shortcut.float_images()])
    (probs, cams), (probs64, cams64) = predict_with_cams(trained_model, x), predict_with_cams(trained_model, x, batch_size=64)
    assert INFERENCE_BATCH < len(x) <= 64, "the images span several of today's batches and one of the old"
    assert torch.equal(probs, probs64) and torch.equal(cams, cams64)
    n = len(test)
    ours = evaluate_predictions(test.labels, probs[:n].argmax(1), cams[:n], test.masks, 5.0, test.regions, test.child)
    old = evaluate_predictions(test.labels, probs64[:n].argmax(1), cams64[:n], test.masks, 5.0, test.regions, test.child)
    assert ours == old
