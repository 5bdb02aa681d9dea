"""Unrefined training and eXBL refinement (paper, section 4.2 and footnote 4).

Both loops share one engine: Adam with the learning rate decayed on plateau, early
stopping on validation loss with the best weights restored, an event callback that
receives plain numbers, and cancellation through a ``threading.Event`` checked at
every batch. A new best model is handed to ``on_checkpoint`` as soon as it appears,
so a cancelled or failed run always leaves its best epoch behind (the pipeline keeps it
in a partial file, never over a finished model). A cancel, a fault and a KeyboardInterrupt
each end with a ``cancelled`` or ``failed`` event.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from exbl_core.augment import hide_patches, random_shift
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.data import Split
from exbl_core.events import Event, EventCallback
from exbl_core.explainers.gradcam import INFERENCE_BATCH, analytic_cams, head_pass
from exbl_core.methods import Batch, Objective
from exbl_core.metrics import activation_precision_scores
from exbl_core.model import fold_batchnorm

CheckpointCallback = Callable[[dict, int, dict], None]


class TrainingError(RuntimeError):
    """Training stopped on a fault (such as a NaN loss); the best weights were restored."""


class Cancelled(RuntimeError):
    """Raised inside the loop when the cancel event is set; caught by ``fit``."""


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt (SIGINT, or SIGTERM turned into one) whose message says what the step kept."""


@dataclass
class FitResult:
    status: str  # "done" or "cancelled"
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: list[Event]
    kept_message: str | None = None  # set by the pipeline when the attempt did not finish: what it kept


def choose_device() -> torch.device:
    """cuda, then mps, then cpu: chosen once and passed around."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, split: Split, device: torch.device, batch_size: int = 32, limit: int = 256) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over up to ``limit`` training images.

    From random weights at a demo learning rate the weights move faster than the
    running averages (momentum 0.1) can follow, and an eval-mode network then
    predicts one class for everything. ``update_bn`` takes a cumulative average with
    the final weights, for about the cost of one forward pass over the images; it
    gave the same statistics (largest difference 0.0) in the same time as a
    hand-written loop over ``features`` alone, and it needs ``no_grad`` around it.
    ``fit`` averages over batches of the training batch's size, the statistics training
    itself normalised with; on CPU that is also faster than batches of 64 (0.93-1.26 s
    against 1.45-1.49 s for 256 images at 128 px, ``python -m bench.epoch_parts``).
    """
    count = min(len(split), limit)
    batches = (split.float_images(slice(s, min(s + batch_size, count))) for s in range(0, count, batch_size))
    with torch.no_grad():
        update_bn(batches, model, device)


def _batch_losses(model: nn.Module, batch: Batch, cfg: TrainConfig, objective: Objective | None, training: bool) -> dict:
    """CE, and with a refinement objective its term, weighted by ``cfg`` (then a ``RefineConfig``), from one forward pass."""
    state = head_pass(model, batch.x)
    ce = F.cross_entropy(state.logits, batch.y)
    out = {"ce": ce, "logits": state.logits, "state": state, "loss": ce}
    if objective is None or objective.term is None:
        return out
    if not isinstance(cfg, RefineConfig):
        raise TypeError("a method's term is weighted by refinement settings: pass a RefineConfig")
    terms = objective.term(model, batch, state, training)
    out.update(expl=terms["expl"], loss=ce + cfg.weight * terms["expl"])
    if "active_triplets" in terms:
        out["active_triplets"] = terms["active_triplets"]
    return out


def evaluate_loss(
    model: nn.Module, split: Split, cfg: TrainConfig, objective: Objective | None, device: torch.device, needs_masks: bool = False
) -> dict:
    """Validation numbers: loss (what early stopping watches), CE, accuracy and AP.

    A method that rewrites batches (counterexamples) sees the validation images the
    same way, with a fixed seed, so that early stopping judges the data the method
    trains on rather than the confounded originals. In eval mode the network is the
    BatchNorm-folded copy, in inference's small batches: the same numbers up to float
    rounding, in under half the time on CPU.
    """
    folded = fold_batchnorm(model)
    sums = {"loss": 0.0, "ce": 0.0, "expl": 0.0, "correct": 0.0}
    ap = []
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad(), _autocast(cfg, device):
        for start in range(0, len(split), INFERENCE_BATCH):
            batch = _batch(split, slice(start, start + INFERENCE_BATCH), needs_masks, device)
            if objective is not None and objective.batch is not None:
                batch = objective.batch(batch, gen)
            out = _batch_losses(folded, batch, cfg, objective, training=False)
            preds = out["logits"].argmax(1)
            cams = analytic_cams(folded, out["state"], preds, batch.x.shape[-2:])
            masks = split.masks[start : start + INFERENCE_BATCH].to(device)
            ap.append(activation_precision_scores(cams.float(), masks, cfg.tau).cpu())
            n = len(batch.y)
            sums["loss"] += float(out["loss"].detach()) * n
            sums["ce"] += float(out["ce"].detach()) * n
            sums["expl"] += float(out.get("expl", 0.0)) * n
            sums["correct"] += float((preds == batch.y).sum())
    n = len(split)
    result = {
        "val_loss": sums["loss"] / n,
        "val_ce": sums["ce"] / n,
        "val_accuracy": sums["correct"] / n,
        "val_ap": float(torch.cat(ap).mean()),
    }
    if objective is not None and objective.term is not None:
        result["val_expl"] = sums["expl"] / n
    return result


def _autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """Autocast to ``cfg``'s compute dtype on ``device``; a no-op in fp32.

    Autocast keeps the weights, the optimiser and the gradients in fp32 and runs the
    convolutions and matrix products in bf16; torch's own rules keep reductions and losses
    in fp32. The backward pass runs outside it, in the dtypes the forward recorded.
    """
    dtype = cfg.compute_dtype(device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _batch(split: Split, index: torch.Tensor | slice, with_masks: bool, device: torch.device) -> Batch:
    masks = split.masks[index].to(device) if with_masks else None
    return Batch(split.float_images(index).to(device), split.labels[index].to(device), masks)


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    objective: Objective | None = None,
    on_event: EventCallback | None = None,
    cancel: threading.Event | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    device: torch.device | None = None,
    phase: str = "unrefined",
) -> FitResult:
    """Train ``model`` in place; with a method's ``objective`` this is refinement, and ``cfg`` its ``RefineConfig``.

    Returns when training ends, early-stops or is cancelled, with the best weights
    (lowest validation loss) loaded back into ``model``. A NaN or infinite loss
    raises ``TrainingError`` after restoring the best weights.
    """
    device = device or next(model.parameters()).device
    emit = on_event or (lambda _e: None)
    cancel = cancel or threading.Event()
    model.to(device)
    needs_masks = objective is not None and objective.masks
    rewrite = objective.batch if objective is not None and objective.batch is not None else None
    has_term = objective is not None and objective.term is not None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.lr_factor, patience=cfg.lr_patience)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_batches = math.ceil(len(train) / cfg.batch_size)
    history: list[Event] = []
    best = {"loss": math.inf, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    epoch = 0

    def publish(event: Event) -> None:
        event = {"phase": phase, **event}
        if event["type"] != "batch_end":
            history.append(event)
        emit(event)

    def restore_best() -> None:
        model.load_state_dict(best["state"])

    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            started = time.perf_counter()
            sums = {"loss": 0.0, "ce": 0.0, "expl": 0.0, "active_triplets": 0.0, "correct": 0.0}
            order = torch.randperm(len(train), generator=gen)
            for b in range(n_batches):
                if cancel.is_set():
                    raise Cancelled
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                batch = _batch(train, idx, needs_masks, device)
                if rewrite is not None:
                    batch = rewrite(batch, gen)
                moved = random_shift([batch.x] + ([batch.masks] if needs_masks else []), cfg.shift, cfg.flip, gen)
                batch = Batch(hide_patches(moved[0], cfg.hide, cfg.hide_patch, gen), batch.y, moved[1] if needs_masks else None)
                with _autocast(cfg, device):
                    out = _batch_losses(model, batch, cfg, objective, training=True)
                if not torch.isfinite(out["loss"]):
                    raise TrainingError(f"{phase} training: the loss became {float(out['loss'].detach())} in epoch {epoch}, batch {b + 1}")
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
                n = len(idx)
                sums["loss"] += float(out["loss"].detach()) * n
                sums["ce"] += float(out["ce"].detach()) * n
                sums["correct"] += float((out["logits"].argmax(1) == batch.y).sum())
                if has_term:
                    sums["expl"] += float(out["expl"].detach()) * n
                    sums["active_triplets"] += float(out.get("active_triplets", torch.nan)) * n
                publish({"type": "batch_end", "epoch": epoch, "batch": b + 1, "batches": n_batches, "loss": float(out["loss"].detach())})
            if cancel.is_set():
                raise Cancelled
            recalibrate_batchnorm(model, train, device, cfg.batch_size)
            scores = evaluate_loss(model, val, cfg, objective, device, needs_masks)
            sched.step(scores["val_loss"])
            n = len(train)
            record = {
                "type": "epoch_end",
                "epoch": epoch,
                "epochs": cfg.epochs,
                "loss": sums["loss"] / n,
                "ce": sums["ce"] / n,
                "accuracy": sums["correct"] / n,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
                "precision": "bf16" if cfg.compute_dtype(device) == torch.bfloat16 else "fp32",
                **scores,
            }
            if has_term:
                record["expl"] = sums["expl"] / n
                if "active_triplets" in out:
                    record["active_triplets"] = sums["active_triplets"] / n
            improved = scores["val_loss"] < best["loss"]
            record["best"] = improved
            if improved:
                best.update(loss=scores["val_loss"], epoch=epoch, state=copy.deepcopy(model.state_dict()))
                if on_checkpoint is not None:
                    on_checkpoint(best["state"], epoch, record)
            publish(record)
            if epoch - best["epoch"] >= cfg.patience:
                publish({"type": "early_stop", "epoch": epoch, "best_epoch": best["epoch"]})
                break
    except Cancelled:
        restore_best()
        publish({"type": "cancelled", "epoch": epoch, "best_epoch": best["epoch"]})
        return FitResult("cancelled", best["epoch"], best["loss"], epoch, history)
    except KeyboardInterrupt:
        # SIGINT (or SIGTERM, which the CLI turns into one): recorded like a cancel, then passed on.
        restore_best()
        publish({"type": "cancelled", "epoch": epoch, "best_epoch": best["epoch"], "reason": "interrupted"})
        raise
    except Exception as exc:
        restore_best()
        publish({"type": "failed", "epoch": epoch, "best_epoch": best["epoch"], "error": str(exc)})
        raise
    restore_best()
    model.eval()
    publish({"type": "done", "epoch": epoch, "best_epoch": best["epoch"], "best_val_loss": best["loss"]})
    return FitResult("done", best["epoch"], best["loss"], epoch, history)
