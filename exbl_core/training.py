"""Unrefined training and eXBL refinement (paper, section 4.2 and footnote 4).

Both loops share one engine: Adam with the learning rate decayed on plateau, early
stopping on validation loss with the best weights restored, an event callback that
receives plain numbers, and cancellation through a ``threading.Event`` checked at
every batch. A new best model is handed to ``on_checkpoint`` as soon as it appears,
so a cancelled or failed run always leaves the last good checkpoint behind.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from exbl_core.data import Split
from exbl_core.gradcam import analytic_cams, head_pass
from exbl_core.losses import DISTANCES, EXPLANATIONS, Explanation, explanation, triplet_terms
from exbl_core.metrics import activation_precision_scores

Event = dict
EventCallback = Callable[[Event], None]
CheckpointCallback = Callable[[dict, int, dict], None]


class TrainingError(RuntimeError):
    """Training stopped on a fault (such as a NaN loss); the best weights were restored."""


class Cancelled(RuntimeError):
    """Raised inside the loop when the cancel event is set; caught by ``fit``."""


@dataclass(frozen=True)
class TrainConfig:
    """A flat set of training settings; the defaults are the paper's."""

    epochs: int = 60
    lr: float = 1e-4
    batch_size: int = 32
    patience: int = 5  # early stopping on validation loss
    lr_patience: int = 2  # ReduceLROnPlateau
    lr_factor: float = 0.5
    weight_decay: float = 0.0
    seed: int = 0
    # eXBL refinement only
    lambda_expl: float = 1.0
    margin: float = 1.0
    distance: str = "euclidean"
    explanation: str = "gray_cam"  # E = gray(x) * CAM (the paper's) or "cam"
    tau: float = 5.0  # Activation Precision's top-k percentage, for validation AP

    def __post_init__(self) -> None:
        # Finite as well as in range: inf passes "> 0", and a run with it trains nothing.
        checks = {
            "epochs": self.epochs >= 1,
            "lr": math.isfinite(self.lr) and self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "patience": self.patience >= 1,
            "weight_decay": math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "lambda_expl": math.isfinite(self.lambda_expl) and self.lambda_expl >= 0,
            "margin": math.isfinite(self.margin) and self.margin >= 0,
            "distance": self.distance in DISTANCES,
            "explanation": self.explanation in EXPLANATIONS,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training setting(s): {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Exemplars:
    """The frozen eXBL targets: ``C_good`` and ``C_bad`` as flattened [H*W] tensors."""

    c_good: torch.Tensor
    c_bad: torch.Tensor


@dataclass
class FitResult:
    status: str  # "done" or "cancelled"
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: list[Event]


def choose_device() -> torch.device:
    """cuda, then mps, then cpu: chosen once and passed around."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def compute_exemplars(
    model: nn.Module, good: tuple[torch.Tensor, int], bad: tuple[torch.Tensor, int], kind: Explanation = "gray_cam"
) -> Exemplars:
    """``C = E(x)`` (``gray(x) * GradCAM_y(x)`` by default) for the good and the bad pick, with the current model, detached.

    Each pick is ``(image [1,H,W] in [0, 1], true label)``; ``kind`` must match the
    refinement's ``TrainConfig.explanation``.
    """
    device = next(model.parameters()).device
    images = torch.stack([good[0], bad[0]]).to(device)
    targets = torch.tensor([good[1], bad[1]], device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        state = head_pass(model, images)
        expl = explanation(images, analytic_cams(model, state, targets, images.shape[-2:]), kind)
    model.train(was_training)
    return Exemplars(c_good=expl[0], c_bad=expl[1])


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, split: Split, device: torch.device, batch_size: int = 64, limit: int = 256) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over training images.

    From random weights at a demo learning rate the weights move faster than the
    running averages (momentum 0.1) can follow, and an eval-mode network then
    predicts one class for everything. A cumulative average over up to ``limit``
    training images, taken with the final weights, fixes that for about the cost of
    one forward pass over them.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    count = min(len(split), limit)
    for start in range(0, count, batch_size):
        model.features(model.prepare(split.float_images(slice(start, min(start + batch_size, count))).to(device)))
    for m, (momentum, training) in zip(norms, saved, strict=False):
        m.momentum = momentum
        m.train(training)


def _batch_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, ex: Exemplars | None) -> dict:
    """CE, and with exemplars the eXBL term on true-label CAMs, from one forward pass."""
    state = head_pass(model, x)
    ce = F.cross_entropy(state.logits, y)
    out = {"ce": ce, "logits": state.logits, "state": state}
    if ex is None:
        out["loss"] = ce
        return out
    cams = analytic_cams(model, state, y, x.shape[-2:])
    terms = triplet_terms(explanation(x, cams, cfg.explanation), ex.c_good, ex.c_bad, cfg.margin, cfg.distance)
    out.update(expl=terms.mean(), active=(terms > 0).float().mean(), loss=ce + cfg.lambda_expl * terms.mean())
    return out


def evaluate_loss(model: nn.Module, split: Split, cfg: TrainConfig, ex: Exemplars | None, device: torch.device) -> dict:
    """Validation numbers: loss (what early stopping watches), CE, accuracy and AP."""
    model.eval()
    sums = {"loss": 0.0, "ce": 0.0, "expl": 0.0, "correct": 0.0}
    ap = []
    with torch.no_grad():
        for start in range(0, len(split), 128):
            x = split.float_images(slice(start, start + 128)).to(device)
            y = split.labels[start : start + 128].to(device)
            out = _batch_losses(model, x, y, cfg, ex)
            preds = out["logits"].argmax(1)
            cams = analytic_cams(model, out["state"], preds, x.shape[-2:])
            ap.append(activation_precision_scores(cams, split.masks[start : start + 128].to(device), cfg.tau).cpu())
            n = len(y)
            sums["loss"] += float(out["loss"].detach()) * n
            sums["ce"] += float(out["ce"].detach()) * n
            sums["expl"] += float(out.get("expl", 0.0)) * n
            sums["correct"] += float((preds == y).sum())
    n = len(split)
    result = {
        "val_loss": sums["loss"] / n,
        "val_ce": sums["ce"] / n,
        "val_accuracy": sums["correct"] / n,
        "val_ap": float(torch.cat(ap).mean()),
    }
    if ex is not None:
        result["val_expl"] = sums["expl"] / n
    return result


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    exemplars: Exemplars | None = None,
    on_event: EventCallback | None = None,
    cancel: threading.Event | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    device: torch.device | None = None,
    phase: str = "unrefined",
) -> FitResult:
    """Train ``model`` in place; with ``exemplars`` this is eXBL refinement.

    Returns when training ends, early-stops or is cancelled, with the best weights
    (lowest validation loss) loaded back into ``model``. A NaN or infinite loss
    raises ``TrainingError`` after restoring the best weights.
    """
    device = device or next(model.parameters()).device
    emit = on_event or (lambda _e: None)
    cancel = cancel or threading.Event()
    model.to(device)
    ex = None if exemplars is None else Exemplars(exemplars.c_good.to(device), exemplars.c_bad.to(device))
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
            sums = {"loss": 0.0, "ce": 0.0, "expl": 0.0, "active": 0.0, "correct": 0.0}
            order = torch.randperm(len(train), generator=gen)
            for b in range(n_batches):
                if cancel.is_set():
                    raise Cancelled
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                x = train.float_images(idx).to(device)
                y = train.labels[idx].to(device)
                out = _batch_losses(model, x, y, cfg, ex)
                if not torch.isfinite(out["loss"]):
                    raise TrainingError(f"{phase} training: the loss became {float(out['loss'].detach())} in epoch {epoch}, batch {b + 1}")
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
                n = len(idx)
                sums["loss"] += float(out["loss"].detach()) * n
                sums["ce"] += float(out["ce"].detach()) * n
                sums["correct"] += float((out["logits"].argmax(1) == y).sum())
                if ex is not None:
                    sums["expl"] += float(out["expl"].detach()) * n
                    sums["active"] += float(out["active"]) * n
                publish({"type": "batch_end", "epoch": epoch, "batch": b + 1, "batches": n_batches, "loss": float(out["loss"].detach())})
            if cancel.is_set():
                raise Cancelled
            recalibrate_batchnorm(model, train, device)
            scores = evaluate_loss(model, val, cfg, ex, device)
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
                **scores,
            }
            if ex is not None:
                record["expl"] = sums["expl"] / n
                record["active_triplets"] = sums["active"] / n
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
    except Exception as exc:
        restore_best()
        publish({"type": "failed", "epoch": epoch, "best_epoch": best["epoch"], "error": str(exc)})
        raise
    restore_best()
    model.eval()
    publish({"type": "done", "epoch": epoch, "best_epoch": best["epoch"], "best_val_loss": best["loss"]})
    return FitResult("done", best["epoch"], best["loss"], epoch, history)
