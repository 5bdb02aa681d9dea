"""The work the background runner does: the pipeline's steps, with cancellation between them.

Each function returns a ``Work`` callable for ``JobRunner.start``. Steps publish the
training loop's own events, plus ``start`` (a phase begins, with its epoch count, so
that progress bars know the total), ``plan`` (every phase of a multi-phase job and its
epochs, so that one bar covers the whole job) and ``step`` (a non-training step, for the
status line; the ``pair`` step names the good and bad images that refinement uses).
"""

from __future__ import annotations

import threading

import torch

from exbl_core import pipeline, runs
from exbl_core.data import Split
from studio import cache
from studio.jobs import Emit, Work


def _train(run: runs.Run, data: dict[str, Split], device: torch.device, emit: Emit, cancel: threading.Event) -> str:
    emit({"type": "start", "phase": "unrefined", "epochs": pipeline.train_config(run, "train").epochs})
    status = pipeline.train_step(run, data, device, emit, cancel).status
    if status == "done":
        emit({"type": "step", "step": "warm", "message": "Computing GradCAM for Explore…"})
        cache.warm(run, "unrefined", ("train", "test"))
    return status


def _refine(run: runs.Run, data: dict[str, Split], device: torch.device, emit: Emit, cancel: threading.Event, overrides: dict) -> str:
    emit({"type": "start", "phase": "refine", "epochs": overrides.get("epochs", pipeline.train_config(run, "refine").epochs)})
    return pipeline.refine_step(run, data, device, emit, cancel, overrides).status


def _evaluate(run: runs.Run, data: dict[str, Split], device: torch.device, emit: Emit) -> str:
    emit({"type": "step", "step": "evaluate", "message": "Evaluating both models on every split…"})
    pipeline.evaluate_step(run, data, device)
    pipeline.figure_step(run, data, device)
    cache.warm(run, "refined", ("test",))
    return "done"


def train_work(run: runs.Run, data: dict[str, Split], device: torch.device) -> Work:
    """Train the unrefined model."""
    return lambda emit, cancel: _train(run, data, device, emit, cancel)


def _pair_event(emit: Emit, pick: dict) -> None:
    good, bad = pick["good"]["index"], pick["bad"]["index"]
    emit({"type": "step", "step": "pair", "good": good, "bad": bad, "message": f"Pair saved: good #{good}, bad #{bad}"})


def refine_work(run: runs.Run, data: dict[str, Split], device: torch.device, good: int, bad: int, overrides: dict) -> Work:
    """Save the pair, refine, then evaluate (skipped after Cancel, so that Cancel answers at once)."""

    def work(emit: Emit, cancel: threading.Event) -> str:
        emit({"type": "step", "step": "pick", "message": f"Saving the pair: good #{good}, bad #{bad}…"})
        _pair_event(emit, pipeline.pick_step(run, data, device, good, bad))
        if cancel.is_set():
            return "cancelled"
        status = _refine(run, data, device, emit, cancel, overrides)
        if status != "done":
            return status
        return _evaluate(run, data, device, emit)

    return work


def evaluate_work(run: runs.Run, data: dict[str, Split], device: torch.device) -> Work:
    """Compute metrics.json, figure3.png and Table 1 for both models."""
    return lambda emit, cancel: _evaluate(run, data, device, emit)


def demo_work(run: runs.Run, device: torch.device) -> Work:
    """The whole workflow on a new run: train, automatic pick, refine, evaluate."""

    def work(emit: Emit, cancel: threading.Event) -> str:
        phases = {"unrefined": pipeline.train_config(run, "train").epochs, "refine": pipeline.train_config(run, "refine").epochs}
        emit({"type": "plan", "phases": phases})
        emit({"type": "step", "step": "data", "message": "Generating the synthetic data…"})
        data = pipeline.load_data(run)
        if _train(run, data, device, emit, cancel) != "done" or cancel.is_set():
            return "cancelled"
        emit({"type": "step", "step": "pick", "message": "Picking the pair automatically by AP…"})
        _pair_event(emit, pipeline.pick_step(run, data, device))
        if _refine(run, data, device, emit, cancel, {}) != "done" or cancel.is_set():
            return "cancelled"
        return _evaluate(run, data, device, emit)

    return work
