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

from exbl_core import assets, evaluation, explainers, faithfulness, files, pipeline, run_data, run_models, runs
from exbl_core.data import Split
from exbl_core.explainers.occlusion import PATCH, STRIDE
from studio import cache
from studio.jobs import Emit, Work


def _train(run: runs.Run, data: dict[str, Split], device: torch.device, emit: Emit, cancel: threading.Event) -> str:
    status = pipeline.train_step(run, data, device, emit, cancel).status
    if status == "done":
        emit({"type": "step", "step": "warm", "message": "Computing GradCAM for Explore…"})
        cache.warm(run, "unrefined", ("train", "test"))
    return status


def _refine(run: runs.Run, data: dict[str, Split], device: torch.device, emit: Emit, cancel: threading.Event, overrides: dict) -> str:
    return pipeline.refine_step(run, data, device, emit, cancel, overrides).status


def _evaluate(run: runs.Run, data: dict[str, Split], device: torch.device, emit: Emit) -> str:
    emit({"type": "step", "step": "evaluate", "message": "Evaluating every model on every split…"})
    pipeline.evaluate_step(run, data, device)
    pipeline.figure_step(run, data, device)
    for method in run_models.refined(run):
        cache.warm(run, method, ("test",))
    return "done"


FIGURE_ROWS = 4  # results.default_figure_rows: the rows figure_step explains


def _passes(data: dict[str, Split], images: int) -> float:
    """``images`` forward passes in validation passes: what one epoch's validation forwards
    (BatchNorm recalibration on up to 256 training images, then the validation split)."""
    return images / (min(len(data["train"]), 256) + len(data["val"]))


def evaluation_passes(run: runs.Run, data: dict[str, Split], measured: int, figured: int, warmed: int) -> float:
    """What ``_evaluate`` costs, in validation passes (``progress.steps_left``).

    Per ``measured`` model: predictions and GradCAM on every split, then each usable
    explainer on the sampled images of the scored splits (occlusion's windows, GradCAM's
    one pass, deletion's two). Figure 3 explains its rows for each of ``figured`` models,
    and ``warmed`` new refined models get their test GradCAM for Explore. Counting passes
    instead of guessing seconds lets the job's own validation time set the speed, whatever
    the machine and its load.
    """
    size = int(data["train"].images.shape[-1])
    usable = explainers.usable(size)
    windows = ((size - PATCH) // STRIDE + 1) ** 2 if "occlusion" in usable else 0
    per_image = windows + (1 if "gradcam" in usable else 0) + 2 * len(usable) + 1
    seed = run_data.data_config(run).seed
    explained = sum(len(faithfulness.sample_indices(len(data[s]), seed)) for s in faithfulness.SPLITS if s in data)
    predicted = sum(len(data[s]) for s in evaluation.EVAL_SPLITS if s in data)
    images = measured * (predicted + explained * per_image) + figured * FIGURE_ROWS * (windows + 2) + warmed * len(data["test"])
    return _passes(data, images)


def to_measure(run: runs.Run, new: str) -> int:
    """How many models ``evaluate_step`` will measure after ``new`` is trained: it, and those metrics.json has no entry for
    (an unchanged model keeps its entry, ``evaluation.evaluation_key``)."""
    earlier = files.read_json(run.file(runs.METRICS)).get("model_keys", {}) if run.has(runs.METRICS) else {}
    return 1 + sum(m != new and m not in earlier for m in run_models.models_in(run))


def warm_passes(data: dict[str, Split]) -> float:
    """GradCAM for Explore on the training and test images, in validation passes."""
    return _passes(data, len(data["train"]) + len(data["test"]))


def train_work(run: runs.Run, data: dict[str, Split], device: torch.device) -> Work:
    """Train the unrefined model. Training again sets the old model and its results aside;
    they are dropped when the new model finishes, and come back if it does not."""

    def work(emit: Emit, cancel: threading.Event) -> str:
        emit({"type": "plan", "phases": {"unrefined": run_data.train_config(run, "train").epochs}, "after": {"warm": warm_passes(data)}})
        if not run.has(runs.UNREFINED):
            return _train(run, data, device, emit, cancel)
        with runs.replacing(run.path, runs.MODEL_FILES):
            return _train(run, data, device, emit, cancel)

    return work


def _pair_event(emit: Emit, pick: dict) -> None:
    good, bad = pick["good"]["index"], pick["bad"]["index"]
    emit({"type": "step", "step": "pair", "good": good, "bad": bad, "message": f"Pair saved: good #{good}, bad #{bad}"})


def refine_work(
    run: runs.Run,
    data: dict[str, Split],
    device: torch.device,
    good: int,
    bad: int,
    overrides: dict,
    explainer: str = "gradcam",
    rule: str = "user",
) -> Work:
    """Save the pair, refine, then evaluate (skipped after Cancel, so that Cancel answers at once).

    ``explainer`` names the maps the pair was judged on and ``rule`` how it was chosen
    (``state.pair_explainer`` and ``state.pair_rule``): pair.json records both.
    """

    def work(emit: Emit, cancel: threading.Event) -> str:
        cfg = run_data.refine_settings(run, overrides)
        figured = 1 + len(set(run_models.refined(run)) | {cfg.method})
        after = {"evaluate": evaluation_passes(run, data, to_measure(run, cfg.method), figured, 1)}
        emit({"type": "plan", "phases": {"refine": cfg.epochs}, "after": after})
        emit({"type": "step", "step": "pick", "message": f"Saving the pair: good #{good}, bad #{bad}…"})
        _pair_event(emit, pipeline.pick_step(run, data, device, good, bad, explainer=explainer, rule=rule))
        if cancel.is_set():
            return "cancelled"
        status = _refine(run, data, device, emit, cancel, overrides)
        if status != "done":
            return status
        return _evaluate(run, data, device, emit)

    return work


def evaluate_work(run: runs.Run, data: dict[str, Split], device: torch.device) -> Work:
    """Compute metrics.json, figure3.png and Table 1 for every model of the run."""
    return lambda emit, cancel: _evaluate(run, data, device, emit)


def oracle_work(run: runs.Run, data: dict[str, Split], device: torch.device) -> Work:
    """Train the oracle, then evaluate, so that every verdict can say how much was recovered."""

    def work(emit: Emit, cancel: threading.Event) -> str:
        after = (
            {"evaluate": evaluation_passes(run, data, to_measure(run, "oracle"), 1 + len(run_models.refined(run)), 0)}
            if run_models.refined(run)
            else {}
        )
        emit({"type": "plan", "phases": {"oracle": run_data.train_config(run, "train").epochs}, "after": after})
        status = pipeline.train_step(run, data, device, emit, cancel, role="oracle").status
        if status != "done" or not run_models.refined(run):
            return status
        return _evaluate(run, data, device, emit)

    return work


def demo_work(run: runs.Run, device: torch.device, methods: tuple[str, ...], shipped: bool = False) -> Work:
    """The whole workflow on a new run: train (or, with ``shipped``, copy the shipped unrefined model and oracle),
    automatic pick, refine with each of ``methods``, evaluate."""

    def work(emit: Emit, cancel: threading.Event) -> str:
        phases = {"refine": sum(run_data.refine_settings(run, {"method": m}).epochs for m in methods)}
        if not shipped:
            phases = {"unrefined": run_data.train_config(run, "train").epochs, **phases}
        emit({"type": "step", "step": "data", "message": "Generating the synthetic data…"})
        data = run_data.load_data(run)
        # A new run measures every model, and the shipped example brings its oracle, unless it brings their metrics too.
        brought = shipped and assets.brings_metrics(assets.read_manifest(), run)
        measured = len(methods) + (0 if brought else 1 + shipped)
        evaluate = evaluation_passes(run, data, measured, 1 + len(methods), len(methods))
        after = {"pick": _passes(data, len(data["train"])), "evaluate": evaluate}
        emit({"type": "plan", "phases": phases, "after": after if shipped else {"warm": warm_passes(data), **after}})
        if shipped:
            emit({"type": "step", "step": "data", "message": "Starting from the shipped unrefined model and oracle (no training)…"})
            assets.install(run)
            cache.warm(run, "unrefined", ("train", "test"))
        elif _train(run, data, device, emit, cancel) != "done" or cancel.is_set():
            return "cancelled"
        emit({"type": "step", "step": "pick", "message": "Picking the pair automatically by AP…"})
        _pair_event(emit, pipeline.pick_step(run, data, device))
        for method in methods:
            if _refine(run, data, device, emit, cancel, {"method": method}) != "done" or cancel.is_set():
                return "cancelled"
        return _evaluate(run, data, device, emit)

    return work
