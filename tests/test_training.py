"""Training (docs/design.md §8): events, early stopping, best weights, cancellation and faults.

Every test trains a fresh model on 16 images of 32x32 for one to three epochs.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from exbl_core import checkpoints, config, training
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.data import CLASSES
from exbl_core.methods.exbl import Exemplars, compute_exemplars, triplet_objective
from exbl_core.model import build_model
from exbl_core.training import TrainingError, fit

CFG = TrainConfig(epochs=2, lr=1e-3, batch_size=8, seed=0)
REFINE = RefineConfig(epochs=1, lr=1e-3, batch_size=8, seed=0)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(num_classes=len(CLASSES))


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


class Recorder:
    """Collects events and checkpoints, as the CLI and the app do."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.checkpoints: list[tuple[int, dict]] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def checkpoint(self, state: dict, epoch: int, record: dict) -> None:
        self.checkpoints.append((epoch, {k: v.clone() for k, v in state.items()}))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events if e["type"] != "batch_end"]


def test_events_are_batch_ends_then_epoch_end_per_epoch_then_done(model, micro_data):
    rec = Recorder()
    result = fit(model, micro_data["train"], micro_data["val"], CFG, on_event=rec)
    assert result.status == "done" and result.epochs_run == 2
    assert rec.types() == ["epoch_end", "epoch_end", "done"]
    batch_ends = [e for e in rec.events if e["type"] == "batch_end"]
    assert [(e["epoch"], e["batch"], e["batches"]) for e in batch_ends] == [(1, 1, 2), (1, 2, 2), (2, 1, 2), (2, 2, 2)]
    assert [e["type"] for e in result.history] == rec.types(), "history keeps everything but batch ends"


def test_epoch_end_carries_plain_numbers_for_plots(model, micro_data):
    rec = Recorder()
    fit(model, micro_data["train"], micro_data["val"], replace(CFG, epochs=1), on_event=rec)
    end = next(e for e in rec.events if e["type"] == "epoch_end")
    for key in ("loss", "ce", "accuracy", "lr", "val_loss", "val_accuracy", "val_ap", "seconds"):
        assert isinstance(end[key], float), key
    assert end["phase"] == "unrefined" and end["best"] is True
    assert 0 <= end["val_ap"] <= 1


def test_refinement_reports_the_explanation_loss_and_active_triplets(model, micro_data):
    train = micro_data["train"]
    x = train.float_images(torch.tensor([0, 1]))
    ex = compute_exemplars(model, (x[0], int(train.labels[0])), (x[1], int(train.labels[1])))
    assert ex.c_good.shape == (32 * 32,) and not ex.c_good.requires_grad
    rec = Recorder()
    fit(
        model,
        train,
        micro_data["val"],
        REFINE,
        triplet_objective(ex, "gray_cam", "euclidean", 1.0),
        on_event=rec,
        phase="refine",
    )
    end = next(e for e in rec.events if e["type"] == "epoch_end")
    assert end["phase"] == "refine"
    assert end["expl"] >= 0 and 0 <= end["active_triplets"] <= 1
    assert "val_expl" in end


def test_exemplars_follow_the_explanation_kind(model, micro_data):
    # C_good for "cam" is the CAM itself; for the paper's "gray_cam" it is image x CAM.
    train = micro_data["train"]
    x = train.float_images(torch.tensor([0, 1]))
    picks = (x[0], int(train.labels[0])), (x[1], int(train.labels[1]))
    cam_only, paper = compute_exemplars(model, *picks, kind="cam"), compute_exemplars(model, *picks)
    assert torch.allclose(paper.c_good, cam_only.c_good * x[0].flatten())


def test_explanation_weight_zero_makes_refinement_plain_cross_entropy(model, micro_data):
    ex = Exemplars(c_good=torch.ones(32 * 32), c_bad=torch.zeros(32 * 32))  # every E is far from good: l_i > 0
    rec = Recorder()
    objective = triplet_objective(ex, "gray_cam", "euclidean", 1.0)
    fit(model, micro_data["train"], micro_data["val"], replace(REFINE, lambda_expl=0.0), objective, on_event=rec)
    end = next(e for e in rec.events if e["type"] == "epoch_end")
    assert end["loss"] == pytest.approx(end["ce"])
    assert end["expl"] > 0


def _scripted_val_losses(monkeypatch, losses: list[float], snapshots: list[dict]):
    """Replace the validation pass with scripted losses, snapshotting the weights each epoch."""
    real = training.evaluate_loss
    calls = iter(losses)

    def scripted(model, split, cfg, ex, device, needs_masks=False):
        snapshots.append(_state_copy(model))
        return {**real(model, split, cfg, ex, device), "val_loss": next(calls)}

    monkeypatch.setattr(training, "evaluate_loss", scripted)


def test_early_stopping_after_patience_epochs_without_improvement(model, micro_data, monkeypatch):
    snapshots: list[dict] = []
    _scripted_val_losses(monkeypatch, [1.0, 0.5, 0.9, 0.8, 0.7, 0.6], snapshots)
    rec = Recorder()
    result = fit(model, micro_data["train"], micro_data["val"], replace(CFG, epochs=6, patience=2), on_event=rec)
    assert rec.types() == ["epoch_end"] * 4 + ["early_stop", "done"]
    stop = next(e for e in rec.events if e["type"] == "early_stop")
    assert stop["epoch"] == 4 and stop["best_epoch"] == 2
    assert result.best_epoch == 2 and result.best_val_loss == 0.5 and result.epochs_run == 4


def test_best_weights_are_restored_at_the_end(model, micro_data, monkeypatch):
    snapshots: list[dict] = []
    _scripted_val_losses(monkeypatch, [0.5, 0.9, 0.9], snapshots)
    rec = Recorder()
    fit(model, micro_data["train"], micro_data["val"], replace(CFG, epochs=3), on_event=rec, on_checkpoint=rec.checkpoint)
    assert [epoch for epoch, _ in rec.checkpoints] == [1], "a checkpoint only for a new best"
    final = _state_copy(model)
    assert _same_weights(final, rec.checkpoints[0][1])
    assert not _same_weights(final, snapshots[-1]), "the last epoch's weights were different"


def _cancel_at(cancel: threading.Event, epoch: int, batch: int, rec: Recorder):
    def on_event(event: dict) -> None:
        rec(event)
        if event["type"] == "batch_end" and (event["epoch"], event["batch"]) == (epoch, batch):
            cancel.set()

    return on_event


def test_cancel_mid_epoch_stops_at_the_next_batch_and_keeps_the_checkpoint(model, micro_data, tmp_path):
    path = tmp_path / "unrefined.pt"
    rec, cancel = Recorder(), threading.Event()

    def save(state, epoch, record):
        rec.checkpoint(state, epoch, record)
        checkpoints.save_checkpoint(path, state, {"epoch": epoch})

    result = fit(
        model,
        micro_data["train"],
        micro_data["val"],
        replace(CFG, epochs=3),
        on_event=_cancel_at(cancel, 2, 1, rec),
        cancel=cancel,
        on_checkpoint=save,
    )
    assert result.status == "cancelled" and result.best_epoch == 1 and result.epochs_run == 2
    assert rec.types() == ["epoch_end", "cancelled"]
    assert not [e for e in rec.events if e["type"] == "batch_end" and e["epoch"] == 2 and e["batch"] == 2]
    fresh = build_model(num_classes=4)
    assert checkpoints.load_checkpoint(path, fresh)["epoch"] == 1
    assert _same_weights(fresh.state_dict(), rec.checkpoints[0][1])
    assert _same_weights(_state_copy(model), rec.checkpoints[0][1]), "the model is back at its best weights"


def test_cancel_before_any_epoch_completes_writes_no_checkpoint(model, micro_data):
    rec, cancel = Recorder(), threading.Event()
    before = _state_copy(model)
    result = fit(
        model,
        micro_data["train"],
        micro_data["val"],
        CFG,
        on_event=_cancel_at(cancel, 1, 1, rec),
        cancel=cancel,
        on_checkpoint=rec.checkpoint,
    )
    assert result.status == "cancelled" and result.best_epoch == 0
    assert rec.checkpoints == []
    assert _same_weights(_state_copy(model), before)


def test_cancel_from_another_thread_ends_the_run(model, micro_data):
    cancel = threading.Event()
    timer = threading.Timer(0.01, cancel.set)
    timer.start()
    result = fit(model, micro_data["train"], micro_data["val"], replace(CFG, epochs=50), cancel=cancel)
    timer.join()
    assert result.status == "cancelled" and result.epochs_run < 50


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_naming_the_epoch_and_keeps_the_last_good_checkpoint(model, micro_data, tmp_path, monkeypatch, bad):
    path = tmp_path / "unrefined.pt"
    rec = Recorder()
    poisoned = {"on": False}
    real = training._batch_losses

    def batch_losses(*args, **kwargs):
        out = real(*args, **kwargs)
        if poisoned["on"]:
            out["loss"] = out["loss"] + bad
        return out

    def on_event(event):
        rec(event)
        if event["type"] == "epoch_end" and event["epoch"] == 1:
            poisoned["on"] = True  # the loss blows up from epoch 2 on

    def save(state, epoch, record):
        rec.checkpoint(state, epoch, record)
        checkpoints.save_checkpoint(path, state, {"epoch": epoch})

    monkeypatch.setattr(training, "_batch_losses", batch_losses)
    with pytest.raises(TrainingError, match=rf"loss became {bad} in epoch 2, batch 1"):
        fit(model, micro_data["train"], micro_data["val"], replace(CFG, epochs=3), on_event=on_event, on_checkpoint=save)
    failed = rec.events[-1]
    assert failed["type"] == "failed" and failed["epoch"] == 2 and failed["best_epoch"] == 1
    assert _same_weights(_state_copy(model), rec.checkpoints[0][1]), "best weights restored"
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert checkpoints.load_checkpoint(path, build_model(num_classes=4))["epoch"] == 1


def test_poisoned_weights_give_a_training_error_not_silent_nans(model, micro_data):
    def on_event(event):
        if event["type"] == "batch_end" and event["batch"] == 1:
            with torch.no_grad():
                model.classifier[0].weight.fill_(float("nan"))

    with pytest.raises(TrainingError, match="epoch 1, batch 2"):
        fit(model, micro_data["train"], micro_data["val"], CFG, on_event=on_event)


@pytest.mark.parametrize(
    "setting", [{"epochs": 0}, {"lr": 0.0}, {"batch_size": 0}, {"margin": -1.0}, {"distance": "cosine"}, {"explanation": "gray"}]
)
def test_invalid_settings_are_refused_naming_them(setting):
    name = next(iter(setting))
    holder = RefineConfig if name in config.REFINEMENT_ONLY else TrainConfig  # the settings object that holds it
    with pytest.raises(ValueError, match=rf"invalid training setting.*{name}="):
        holder(**setting)


def test_device_is_chosen_once_and_is_cpu_here():
    assert training.choose_device().type in ("cuda", "mps", "cpu")
