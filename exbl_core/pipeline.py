"""The workflow's steps on a run folder: train, pick, refine, evaluate, figure.

The command-line interface and the app both call these functions, so a run made in
one can be continued in the other. Each step reads what it needs from the run folder
(``run_data``, ``run_models``) and writes its results back atomically; what a step only
computes lives in the module named for it (``picking``, ``evaluation``, ``results``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from exbl_core import (
    checkpoints,
    config,
    errors,
    evaluation,
    explainers,
    faithfulness,
    files,
    picking,
    results,
    run_data,
    run_models,
    runs,
    weights,
)
from exbl_core.data import CLASSES, VIRAL_PNEUMONIA, Split
from exbl_core.events import END_TYPES, Event, EventCallback
from exbl_core.explainers.gradcam import predict_with_cams
from exbl_core.figures import EXEMPLAR_COLUMNS, cam_grid, figure3, figure_png, table1_markdown
from exbl_core.methods import Pair, check_feedback, get_method
from exbl_core.metrics import activation_precision_scores, shortcut_gap
from exbl_core.model import build_model, freeze_early_blocks
from exbl_core.training import FitResult, Interrupted, TrainingError, fit
from exbl_core.verdict import shortcut_verdict

# What a step needs in the run folder, and the step that makes it: each step checks it first,
# and the command line before it loads any data.
NEEDS = {
    "pick": (runs.UNREFINED, "train"),
    "refine": (runs.PAIR, "pick"),
    "evaluate": (runs.UNREFINED, "train"),
    "figure": (runs.UNREFINED, "train"),
}


def check_ready(run: runs.Run, step: str) -> None:
    """Refuse ``step`` on a run that lacks what it needs (``NEEDS``), naming the step to run first."""
    if step in NEEDS:
        name, maker = NEEDS[step]
        if not run.has(name):
            raise errors.RunError(f"{run.path}: nothing to {step} yet ({name} is missing); run {maker} first")


# --------------------------------------------------------------------------- training a model's file


@dataclass
class _Attempt:
    """One training attempt at a model's file: where its best epochs go, and what it kept when it ended.

    A staged file (oracle.pt, refined-*.pt, and unrefined.pt when it replaces a finished run)
    is written to its partial file at every new best epoch and moved onto the model's file
    only when the attempt finishes, so an interrupted or failed attempt never replaces a
    finished model. A first unrefined.pt is written in place: there is nothing to protect,
    and a cancelled first training keeps its best epoch as the run's model.
    """

    run: runs.Run
    name: str  # the finished model's file
    role: str  # "unrefined", "oracle" or the method's name
    phase: str
    cfg: config.TrainConfig  # a RefineConfig for a refinement
    image_size: int
    had_final: bool = False  # a finished model was there when the attempt started
    replaces_run: bool = False  # a finished unrefined.pt and its run wait aside (``runs.replacing``)
    best_epoch: int = 0  # the latest best epoch this attempt wrote
    ended: bool = False  # an end event (done, cancelled, failed) was recorded
    extra: dict = field(default_factory=dict)  # more for the checkpoint's metadata: a refinement's pair

    @property
    def staged(self) -> bool:
        return runs.STAGED_FILES.fullmatch(self.name) is not None or self.replaces_run

    @property
    def target(self) -> str:
        return runs.partial_file(self.name) if self.staged else self.name

    def write(self, state: dict, epoch: int, record: dict) -> None:
        """Save a new best epoch with what it is (see ``run_models.check_identity``)."""
        meta = {
            "phase": self.phase,
            "role": self.role,
            "epoch": epoch,
            "image_size": self.image_size,
            "val_loss": record["val_loss"],
            "settings": self.cfg.to_dict(),
            **run_models.run_identity(self.run),
            **self.extra,
        }
        checkpoints.save_checkpoint(self.run.file(self.target), state, meta)
        self.best_epoch = epoch

    def finish(self) -> None:
        """The attempt ended normally: its best epoch becomes the model (before history says ``done``);
        a new unrefined.pt also drops the run it replaces (``runs.replacing``)."""
        if self.staged and self.best_epoch > 0:
            files.promote(self.run.file(self.target), self.run.file(self.name))
        if self.replaces_run:
            runs.settle(self.run.path)

    def kept(self) -> dict:
        """What an interrupted or failed attempt left, for its history event."""
        kept_file = self.target if self.best_epoch else None
        return {"model": self.name, "model_unchanged": self.staged, "file": kept_file, "epoch": self.best_epoch}

    def message(self) -> str:
        """One sentence on what an interrupted or failed attempt kept, naming the files."""
        if not self.staged:
            if self.best_epoch:
                return f"{self.name} holds this attempt's best epoch {self.best_epoch}; the attempt did not finish"
            return f"no epoch of this attempt finished, so {self.name} was not written by it"
        if self.replaces_run:
            before = f"the previous run comes back unchanged, its finished {self.name} included"
        elif self.had_final:
            before = f"{self.name} is unchanged (the finished model from before)"
        else:
            before = f"there is still no finished {self.name}"
        if self.best_epoch:
            return f"{before}; this attempt's best epoch {self.best_epoch} is in {self.target}"
        return f"{before}; no epoch of this attempt finished, nothing of it was kept"


def _recorder(run: runs.Run, on_event: EventCallback | None, attempt: _Attempt | None = None, **tags) -> EventCallback:
    """Append each event but batches to history, and pass it on; an attempt's end also settles its file.

    ``done`` moves the finished model into place before history records it, so a history that
    says ``done`` never names a model that is not on disk; ``cancelled`` and ``failed`` say what was kept.
    """

    def record(event: Event) -> None:
        event = {**event, **tags}
        if attempt is not None and event["type"] in END_TYPES:
            if event["type"] == "done":
                attempt.finish()  # a failed move is recorded as the attempt's failure, by _fit_step
            else:
                event.update(kept=attempt.kept(), kept_message=attempt.message())
            attempt.ended = True
        if event["type"] != "batch_end":
            run.append_history(event)
        if on_event is not None:
            on_event(event)

    return record


def _fit_step(
    run: runs.Run,
    phase: str,
    role: str,
    cfg: config.TrainConfig,
    model,
    data,
    objective,
    on_event,
    cancel,
    device,
    meta: dict | None = None,
    **tags,
) -> FitResult:
    """Run ``fit`` with its start recorded in history: the settings this attempt really used.

    ``tags`` (a refinement's ``method``) go into every event, so that the history tells
    the attempts of several methods apart; ``meta`` goes into every checkpoint the attempt
    writes. However the attempt ends, history records it; a KeyboardInterrupt comes out as
    ``Interrupted``, saying what was kept.
    """
    name = run_models.model_file(role)
    size = int(data["train"].images.shape[-1])
    replaces_run = name == runs.UNREFINED and runs.replaced_model(run.path)
    attempt = _Attempt(run, name, role, Path(name).stem, cfg, size, had_final=run.has(name) or replaces_run, replaces_run=replaces_run)
    attempt.extra = meta or {}
    record = _recorder(run, on_event, attempt, **tags)
    record({"type": "start", "phase": phase, "epochs": cfg.epochs, "settings": cfg.to_dict(), "time": time.time()})
    try:
        result = fit(model, data["train"], data["val"], cfg, objective, record, cancel, attempt.write, device, phase=phase)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        if not attempt.ended:  # stopped outside fit's loop, or in its own end event: still one end in history
            end = {"type": "cancelled", "reason": "interrupted"} if interrupted else {"type": "failed", "error": str(exc)}
            record({**end, "phase": phase, "epoch": None, "best_epoch": attempt.best_epoch})
        if interrupted:
            raise Interrupted(attempt.message()) from exc
        raise
    if result.status == "done" and result.best_epoch == 0:
        raise TrainingError(
            f"{phase}: no epoch reached a finite validation loss, so {run.file(name)} was not written; try a lower learning rate"
        )
    result.kept_message = None if result.status == "done" else attempt.message()
    return result


def train_step(
    run: runs.Run,
    data: dict[str, Split],
    device: torch.device,
    on_event: EventCallback | None = None,
    cancel: threading.Event | None = None,
    role: str = "unrefined",
) -> FitResult:
    """Train the unrefined model, or with ``role="oracle"`` the oracle; its checkpoint is rewritten at every new best epoch.

    The oracle trains with the unrefined model's settings on the oracle's data: the
    only difference between the two is whether child anatomy follows the class.
    """
    if role not in ("unrefined", "oracle"):
        raise ValueError(f"unknown role {role!r}; choose unrefined or oracle")
    cfg = run_data.train_config(run, "train")
    fit_data = run_data.oracle_data(run) if role == "oracle" else data
    start = run_models.start_weights(run) or weights.resolve(None, real_data=isinstance(run_data.data_config(run), config.FolderSpec))
    backbone = weights.load_recorded(start)
    torch.manual_seed(cfg.seed)
    model = build_model(num_classes=len(CLASSES), backbone=backbone, freeze=False)
    freeze_early_blocks(model, start.frozen_blocks)
    model = model.to(device)
    return _fit_step(run, role, role, cfg, model, fit_data, None, on_event, cancel, device)


def pick_step(
    run: runs.Run,
    data: dict[str, Split],
    device: torch.device,
    good: int | None = None,
    bad: int | None = None,
    explainer: str = "gradcam",
    rule: str = "user",
) -> dict:
    """Choose the exemplars (automatically unless given) and write pair.json and .png.

    ``explainer`` names the maps the pair was judged on (recorded, so that a pick made on
    occlusion maps says so); ``rule`` says how a given pair was chosen. The automatic
    pick reads the same maps: GradCAM's AP (``picking.auto_pick``), or where occlusion maps
    put their mass (``faithfulness.faithful_pick``), which is what a user looking at
    the faithful map would click when GradCAM hides the shortcut.
    """
    check_ready(run, "pick")
    train = data["train"]
    if (good is None) != (bad is None):
        raise ValueError("give both --good and --bad, or neither for the automatic pick")
    explainers.get(explainer)
    if good is not None:
        picking.validate_pick(good, bad, len(train))
    model = run_models.load_model(run, "unrefined", device)
    refine = run_data.train_config(run, "refine")
    scores = picking.training_scores(model, train, refine.tau)
    found = None
    if good is None and explainer == explainers.FAITHFUL:
        good, bad, found = faithfulness.faithful_pick(model, train, seed=refine.seed)
        rule = picking.FAITHFUL_PICK_RULE
    elif good is None:
        good, bad = picking.auto_pick(scores, train.labels)
        rule = picking.AUTO_PICK_RULE
    pick = {"rule": rule, "split": "train", "explainer": explainer}
    if found is not None:
        pick["found"] = found
    for role, i in (("good", good), ("bad", bad)):
        pick[role] = {
            "index": i,
            "name": train.names[i],
            "class": CLASSES[int(train.labels[i])],
            "predicted": CLASSES[int(scores["preds"][i])],
            "ap": float(scores["ap"][i]),
        }
    files.write_json(run.file(runs.PAIR), pick)
    idx = torch.tensor([good, bad])
    labels = [
        f"good #{good} {pick['good']['class']} AP {pick['good']['ap']:.2f}",
        f"bad #{bad} {pick['bad']['class']} AP {pick['bad']['ap']:.2f}",
    ]
    cams = scores["cams"][idx]
    files.atomic_write_bytes(run.file(runs.PAIR_PNG), figure_png(cam_grid(train.float_images(idx), [cams], EXEMPLAR_COLUMNS, labels)))
    return pick


def refine_step(
    run: runs.Run,
    data: dict[str, Split],
    device: torch.device,
    on_event: EventCallback | None = None,
    cancel: threading.Event | None = None,
    overrides: dict | None = None,
) -> FitResult:
    """Refine a copy of the unrefined model with one method; its checkpoint is rewritten at every new best epoch.

    ``overrides`` (method, epochs, lambda_expl, lr, patience, ...) apply to this attempt; history
    and the checkpoint record them. config.json takes them only when the attempt finishes
    (done or early stop), so a failed or interrupted attempt leaves it as it was and a plain retry uses the settings that worked.
    """
    check_ready(run, "refine")
    cfg = run_data.refine_settings(run, overrides)
    method = get_method(cfg.method)
    train = data["train"]
    check_feedback(method, train)
    pick = files.read_json(run.file(runs.PAIR))
    good, bad = pick["good"]["index"], pick["bad"]["index"]
    picking.validate_pick(good, bad, len(train))
    model = run_models.load_model(run, "unrefined", device)
    objective = method.build_objective(model, train, Pair(good, bad), cfg)
    torch.manual_seed(cfg.seed)
    meta = {"pair": picking.pair_record(pick)}
    result = _fit_step(run, "refine", method.name, cfg, model, data, objective, on_event, cancel, device, meta, method=method.name)
    chosen = replace(run_data.train_config(run, "refine"), **(overrides or {}))  # the user's choice, without the method's schedule
    if result.status == "done" and chosen != run_data.train_config(run, "refine"):
        doc = run.config()
        doc["refine"] = chosen.to_dict()
        files.write_json(run.file(runs.CONFIG), doc)
    return result


# --------------------------------------------------------------------------- measuring and drawing


def evaluate_step(run: runs.Run, data: dict[str, Split], device: torch.device) -> dict:
    """metrics.json: every metric of every model on val, test and (synthetic) shortcut_test, and each refinement's verdict.

    A model measured before, unchanged since (``evaluation.evaluation_key``), keeps its entry: after a
    refinement only the new model is measured, not the unrefined model and the oracle again (nor, in
    a run opened from the shipped example, those two ever: ``assets.install`` brings their entries).
    """
    check_ready(run, "evaluate")
    tau = run_data.train_config(run, "refine").tau
    splits = [s for s in evaluation.EVAL_SPLITS if s in data]
    explained = [s for s in splits if s in faithfulness.SPLITS]
    samples = {split: faithfulness.sample_indices(len(data[split]), run_data.data_config(run).seed) for split in explained}
    loaded = {name: run_models.load_model(run, name, device) for name in run_models.models_in(run)}
    keys = {name: evaluation.evaluation_key(run, model, tau, samples) for name, model in loaded.items()}
    earlier = evaluation.earlier_metrics(run)
    models = {}
    for name, model in loaded.items():
        reused = evaluation.reusable_entry(earlier, name, keys[name])
        models[name] = reused if reused is not None else evaluation.measure(model, {s: data[s] for s in splits}, samples, tau)
    metrics: dict = {
        "models": models,
        "explainer_sample": {split: len(idx) for split, idx in samples.items()},
        "model_keys": keys,
        "evaluation_code": evaluation.evaluation_code(),
        "tau": tau,
    }
    if "unrefined" in models and "shortcut_test" in models["unrefined"]:
        metrics["shortcut_gap"] = {name: shortcut_gap(m["test"], m["shortcut_test"]) for name, m in models.items()}
        metrics["verdicts"] = {
            name: shortcut_verdict(models["unrefined"], models[name], models.get("oracle")).to_dict() for name in run_models.refined(run)
        }
    if run.has(runs.PAIR):
        pick = files.read_json(run.file(runs.PAIR))
        metrics["pair"] = {"good": pick["good"]["index"], "bad": pick["bad"]["index"], "rule": pick["rule"]}
    files.write_json(run.file(runs.METRICS), metrics)
    return metrics


def figure_step(run: runs.Run, data: dict[str, Split], device: torch.device, rows: list[int] | None = None) -> list[dict]:
    """figure3.png (Viral Pneumonia test images, unrefined and every refined model) and Table 1 as CSV and Markdown."""
    check_ready(run, "figure")
    test = data["test"]
    outside = [r for r in rows or [] if not 0 <= r < len(test)]
    if outside:
        raise ValueError(f"figure row {outside[0]} is out of range: the test split has images 0 to {len(test) - 1}")
    unrefined = run_models.load_model(run, "unrefined", device)
    title = None
    if rows is None:
        vp = torch.nonzero(test.labels == VIRAL_PNEUMONIA)[:, 0]
        ap = torch.zeros(len(test))  # only the Viral Pneumonia entries are read
        cams = predict_with_cams(unrefined, test.float_images(vp))[1]
        ap[vp] = activation_precision_scores(cams, test.masks[vp], run_data.train_config(run, "refine").tau)
        rows, title = results.default_figure_rows(test, ap), results.FIGURE_ROWS_RULE
    names = ["unrefined", *run_models.refined(run)]
    x = test.float_images(torch.tensor(rows, dtype=torch.long))
    usable = explainers.usable(int(x.shape[-1]))
    explained = {
        name: faithfulness.explain(unrefined if name == "unrefined" else run_models.load_model(run, name, device), x, usable)
        for name in names
    }
    labels = results.figure_row_labels(test, rows, {name: probs.argmax(1) for name, (probs, _) in explained.items()})
    cam_sets = {(name, explainer): maps for name, (_, by) in explained.items() for explainer, maps in by.items()}
    files.atomic_write_bytes(run.file(runs.FIGURE3), figure_png(figure3(x, cam_sets, labels, title=title)))
    metrics = files.read_json(run.file(runs.METRICS)) if run.has(runs.METRICS) else evaluate_step(run, data, device)
    table = results.table1(run, metrics)
    files.atomic_write_text(run.file(runs.TABLE1_CSV), results.table1_csv_text(run, table))
    files.atomic_write_text(run.file(runs.TABLE1_MD), table1_markdown(table, results.table1_note(run, metrics)))
    return table
