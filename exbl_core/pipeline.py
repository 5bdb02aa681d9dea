"""The workflow's steps on a run folder: data, train, pick, refine, evaluate, figures.

The command-line interface and the app both call these functions, so a run made in
one can be continued in the other. Each step reads what it needs from the run folder
and writes its results back atomically.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from exbl_core import config, explainers, faithfulness, runs, weights
from exbl_core import metrics as metrics_module
from exbl_core.data import CLASSES, VIRAL_PNEUMONIA, DataError, Split, SplitSizes, load_entries, make_split, scan_dataset
from exbl_core.events import END_TYPES, Event, EventCallback
from exbl_core.explainers.gradcam import predict_with_cams
from exbl_core.figures import EXEMPLAR_COLUMNS, cam_grid, figure3, figure_png, model_label, table1_csv, table1_markdown, table1_rows
from exbl_core.methods import Pair, check_feedback, get_method
from exbl_core.metrics import activation_precision_scores, evaluate_predictions, shortcut_gap
from exbl_core.model import build_model, freeze_early_blocks
from exbl_core.synthetic import SPLITS, SyntheticConfig, generate_split, oracle_config, split_design
from exbl_core.training import FitResult, Interrupted, TrainConfig, TrainingError, fit
from exbl_core.verdict import shortcut_verdict

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "test", "shortcut_test")
AUTO_PICK_RULE = (
    "automatic: the correctly classified training image with the lowest AP is bad; "
    "the correctly classified image of the same class with the highest AP is good"
)
FAITHFUL_PICK_RULE = (
    "automatic, on occlusion maps: of a seeded sample of correctly classified training images, the one whose map has the "
    "least mass on its lungs is bad; the image of the same class with the most is good"
)


# --------------------------------------------------------------------------- data

# What a step needs in the run folder, and the step that makes it: each step checks it first,
# and the command line before it loads any data.
NEEDS = {
    "pick": (runs.UNREFINED, "train"),
    "refine": (runs.EXEMPLARS, "pick"),
    "evaluate": (runs.UNREFINED, "train"),
    "figure": (runs.UNREFINED, "train"),
}


def check_ready(run: runs.Run, step: str) -> None:
    """Refuse ``step`` on a run that lacks what it needs (``NEEDS``), naming the step to run first."""
    if step in NEEDS:
        name, maker = NEEDS[step]
        if not run.has(name):
            raise runs.RunError(f"{run.path}: nothing to {step} yet ({name} is missing); run {maker} first")


@dataclass
class PreparedRun:
    """A new run's config.json and split.json contents, and (for a data set folder) its loaded data."""

    config: dict
    split: dict
    data: dict[str, Split] | None


def prepare_run(
    data: SyntheticConfig | config.FolderSpec, train: TrainConfig, refine: TrainConfig, start: str | Path | None = None
) -> PreparedRun:
    """Check every setting and read a data set folder in full, writing nothing.

    So a bad setting, a missing or unreadable mask, or a data set too small for the split
    fails before a run folder exists. With ``skip_bad``, what could not be read is listed
    in split.json and left out of its lists. Synthetic data is generated later, on load.
    ``start`` is the backbone to train from: ``imagenet``, ``random`` or a weights file
    (``None``: ImageNet for real data when cached, else random; see ``weights.resolve``);
    config.json records the choice with the file's SHA-256 and the frozen blocks.
    """
    config.check_data(data)
    model_start = weights.resolve(start, real_data=isinstance(data, config.FolderSpec))
    if isinstance(data, config.FolderSpec):
        data = replace(data, path=str(Path(data.path).expanduser().resolve()))  # valid from any working folder
        pairs, skipped = scan_dataset(data.path, skip_bad=data.skip_bad)
        split = make_split(pairs, SplitSizes(data.train, data.val, data.test), data.seed)
        loaded = {}
        for name in ("train", "val", "test"):
            loaded[name] = load_entries(data.path, split[name], data.size, skip_bad=data.skip_bad)
            kept = set(loaded[name].names)
            split[name] = [entry for entry in split[name] if entry[1] in kept]
            skipped += loaded[name].skipped
        split_doc, data_cfg = {"source": "folder", "skipped": skipped, **split}, {"source": "folder", **asdict(data)}
    else:
        loaded = None
        split_doc = {"source": "synthetic", **{s: _synthetic_summary(data, s) for s in SPLITS}}
        data_cfg = {"source": "synthetic", **data.to_dict()}
    doc = {
        "data": data_cfg,
        "train": train.to_dict(),
        "refine": refine.to_dict(),
        "model": model_start.to_dict(),
        "cam_class": {"display": "predicted", "loss": "true label"},
    }
    return PreparedRun(doc, split_doc, loaded)


def write_run(out: str | Path, prepared: PreparedRun) -> runs.Run:
    """Write a prepared run's config.json and split.json; the caller holds the folder's lock."""
    run = runs.create_run(out, prepared.config)
    runs.write_json(run.file(runs.SPLIT), prepared.split)
    return run


def new_run(
    out: str | Path, data: SyntheticConfig | config.FolderSpec, train: TrainConfig, refine: TrainConfig, start: str | Path | None = None
) -> runs.Run:
    """Create a run folder with config.json and split.json, in a new or empty folder only."""
    runs.check_target(out)
    prepared = prepare_run(data, train, refine, start)
    with runs.locked(out, create=True):
        return write_run(out, prepared)


def _synthetic_summary(cfg: SyntheticConfig, split: str) -> dict:
    labels, child = split_design(split, cfg)
    return {"labels": labels.tolist(), "child": child.tolist()}


def data_config(run: runs.Run) -> SyntheticConfig | config.FolderSpec:
    """The run's data settings, checked: a hand-edited config.json gets an error naming it."""
    try:
        cfg = dict(run.config()["data"])
        kinds = {"synthetic": SyntheticConfig, "folder": config.FolderSpec}
        source = cfg.pop("source", None)
        if source not in kinds:
            raise ValueError(f"source {source!r} is neither 'synthetic' nor 'folder'")
        config.check_types(kinds[source], cfg)
        spec = kinds[source](**cfg)
        config.check_data(spec)
    except runs.RunError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise runs.RunError(f"{run.file(runs.CONFIG)}: its 'data' settings are not valid ({_reason(exc)})") from exc
    return spec


def _reason(exc: Exception) -> str:
    return f"missing {exc}" if isinstance(exc, KeyError) else str(exc)


def check_config(run: runs.Run) -> runs.Run:
    """Refuse a config.json of the wrong shape now, with one line naming it, instead of deep in a step."""
    if isinstance(data_config(run), config.FolderSpec):
        for split in ("train", "val", "test"):
            split_entries(run, split)
    for phase in ("train", "refine"):
        train_config(run, phase)
    return run


def split_names(run: runs.Run) -> tuple[str, ...]:
    """The splits this run has: shortcut_test exists only for synthetic data."""
    return SPLITS if isinstance(data_config(run), SyntheticConfig) else ("train", "val", "test")


def load_split(run: runs.Run, split: str) -> Split:
    """One split of the run's data: regenerated (synthetic) or read as split.json lists it."""
    spec = data_config(run)
    if isinstance(spec, SyntheticConfig):
        return generate_split(split, spec)
    if split not in ("train", "val", "test"):
        raise DataError(f"split {split!r} exists only for synthetic data")
    entries = split_entries(run, split)
    return load_entries(spec.path, entries, spec.size, skip_bad=spec.skip_bad)


def split_entries(run: runs.Run, split: str) -> list[tuple[int, str]]:
    """A real-data split's ``(label, image path)`` entries from split.json, checked: a hand-edited
    label out of range or of the wrong type gets one line naming the file, before any training."""
    path = run.file(runs.SPLIT)
    entries = runs.read_json(path).get(split)
    if not isinstance(entries, list):
        raise runs.RunError(f"{path}: has no list of {split} images")
    for i, entry in enumerate(entries):
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)
        label = entry[0] if ok else None
        if not ok or not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(CLASSES):
            raise runs.RunError(
                f"{path}: {split} entry {i} is {json.dumps(entry)}; each must be [label, image path] with a label 0 to {len(CLASSES) - 1}"
            )
    return [(label, rel) for label, rel in entries]


def load_data(run: runs.Run, splits: tuple[str, ...] | None = None) -> dict[str, Split]:
    return {s: load_split(run, s) for s in (splits or split_names(run))}


def train_config(run: runs.Run, phase: str) -> TrainConfig:
    """The run's training (``phase`` "train") or refinement ("refine") settings, checked."""
    try:
        settings = run.config()[phase]
        if not isinstance(settings, dict):
            raise TypeError(f"expected an object, found {type(settings).__name__}")
        config.check_types(TrainConfig, settings)
        return TrainConfig(**settings)
    except (KeyError, TypeError, ValueError) as exc:
        raise runs.RunError(f"{run.file(runs.CONFIG)}: its {phase!r} settings are not valid ({_reason(exc)})") from exc


def start_weights(run: runs.Run) -> weights.StartWeights | None:
    """The weights the run's unrefined model starts from, as config.json records them.

    ``None`` for a run created before config.json recorded them.
    """
    recorded = run.config().get("model")
    return None if recorded is None else weights.StartWeights(**recorded)


# --------------------------------------------------------------------------- model


def model_file(name: str) -> str:
    """The checkpoint of a model of the run: ``unrefined``, ``oracle`` or a method's name."""
    return {"unrefined": runs.UNREFINED, "oracle": runs.ORACLE}.get(name) or runs.refined_file(name)


def models_in(run: runs.Run) -> list[str]:
    """Every model the run holds: unrefined, oracle (when trained), then each refined method."""
    return [m for m in ("unrefined", "oracle") if run.has(model_file(m))] + run.refined()


def load_model(run: runs.Run, which: str = "unrefined", device: torch.device | None = None) -> torch.nn.Module:
    """One of the run's models (see ``models_in``), in eval mode, on ``device``; checked to be that model of this run."""
    name = model_file(which)
    if not run.has(name):
        raise runs.RunError(f"{run.path}: no {which} model yet ({name} is missing)")
    model = build_model(num_classes=len(CLASSES), freeze=False)
    meta = runs.load_checkpoint(run.file(name), model)
    check_identity(run, which, meta)
    return model.to(device or torch.device("cpu")).eval()


def data_fingerprint(data: dict) -> str:
    """SHA-256 of config.json's ``data`` section as canonical JSON, without the data set's path:
    a data set moved to another folder is the same data, and split.json names its images."""
    settings = {k: v for k, v in data.items() if k != "path"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def run_identity(run: runs.Run) -> dict:
    """What every checkpoint records of the run it was trained in: its id (None for a run made
    before runs had one) and its data settings' fingerprint."""
    recorded = run.config()
    return {"run_id": recorded.get("run_id"), "data_sha256": data_fingerprint(recorded.get("data", {}))}


IDENTITY_FIELDS = ("role", "run_id", "data_sha256")


def check_identity(run: runs.Run, which: str, meta: dict) -> None:
    """Refuse a checkpoint that is not ``which`` of this run: a swapped file, another run's, or other data or size.

    A checkpoint written before checkpoints recorded these still loads, with a notice that it
    cannot be checked; each field that is there is checked.
    """
    path = run.file(model_file(which))
    recorded = run.config()
    problems = []
    if "role" in meta and meta["role"] != which:
        problems.append(f"it holds the {meta['role']} model, not the {which} model")
    if "run_id" in meta and meta["run_id"] != recorded.get("run_id"):
        problems.append(f"it was trained in another run (id {meta['run_id']}, this run's is {recorded.get('run_id')})")
    if "data_sha256" in meta and meta["data_sha256"] != data_fingerprint(recorded.get("data", {})):
        problems.append("it was trained on other data settings than this run's config.json")
    size = recorded.get("data", {}).get("size")
    if "image_size" in meta and meta["image_size"] != size:
        problems.append(f"it is for {meta['image_size']} px images, this run's are {size} px")
    if problems:
        raise runs.CheckpointError(f"{path}: {'; '.join(problems)}; it was not loaded")
    missing = [f for f in IDENTITY_FIELDS if f not in meta]
    if missing:
        log.warning("%s: written before checkpoints recorded their model, run and data, so it cannot be checked against this run", path)


def can_train_oracle(run: runs.Run) -> bool:
    """An oracle needs synthetic data (only a phantom can redraw the confounder) and is trained once."""
    return isinstance(data_config(run), SyntheticConfig) and not run.has(runs.ORACLE)


def oracle_data(run: runs.Run) -> dict[str, Split]:
    """The oracle's training and validation splits: the same phantoms, child drawn independently of the class."""
    spec = data_config(run)
    if not isinstance(spec, SyntheticConfig):
        raise DataError("the oracle needs synthetic data: only a phantom can redraw child anatomy independently of the class")
    return {s: generate_split(s, oracle_config(spec)) for s in ("train", "val")}


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
    cfg: TrainConfig
    image_size: int
    had_final: bool = False  # a finished model was there when the attempt started
    replaces_run: bool = False  # a finished unrefined.pt and its run wait aside (``runs.replacing``)
    best_epoch: int = 0  # the latest best epoch this attempt wrote
    ended: bool = False  # an end event (done, cancelled, failed) was recorded
    extra: dict = field(default_factory=dict)  # more for the checkpoint's metadata: a refinement's pair

    @property
    def staged(self) -> bool:
        return self.name in runs.STAGED_FILES or self.replaces_run

    @property
    def target(self) -> str:
        return runs.partial_file(self.name) if self.staged else self.name

    def write(self, state: dict, epoch: int, record: dict) -> None:
        """Save a new best epoch with what it is (see ``check_identity``)."""
        meta = {
            "phase": self.phase,
            "role": self.role,
            "epoch": epoch,
            "image_size": self.image_size,
            "val_loss": record["val_loss"],
            "settings": self.cfg.to_dict(),
            **run_identity(self.run),
            **self.extra,
        }
        runs.save_checkpoint(self.run.file(self.target), state, meta)
        self.best_epoch = epoch

    def finish(self) -> None:
        """The attempt ended normally: its best epoch becomes the model (before history says ``done``);
        a new unrefined.pt also drops the run it replaces (``runs.replacing``)."""
        if self.staged and self.best_epoch > 0:
            runs.promote(self.run.file(self.target), self.run.file(self.name))
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
    cfg: TrainConfig,
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
    name = model_file(role)
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
    cfg = train_config(run, "train")
    fit_data = oracle_data(run) if role == "oracle" else data
    start = start_weights(run) or weights.resolve(None, real_data=isinstance(data_config(run), config.FolderSpec))
    backbone = weights.load_recorded(start)
    torch.manual_seed(cfg.seed)
    model = build_model(num_classes=len(CLASSES), backbone=backbone, freeze=False)
    freeze_early_blocks(model, start.frozen_blocks)
    model = model.to(device)
    return _fit_step(run, role, role, cfg, model, fit_data, None, on_event, cancel, device)


def training_scores(model: torch.nn.Module, split: Split, tau: float = 5.0) -> dict[str, torch.Tensor]:
    """Predictions, CAMs and per-image AP for a split: what picking and browsing need."""
    probs, cams = predict_with_cams(model, split.float_images())
    return {"probs": probs, "preds": probs.argmax(1), "cams": cams, "ap": activation_precision_scores(cams, split.masks, tau)}


def auto_pick(scores: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[int, int]:
    """The automatic pick: ``(good, bad)`` training-image indices, as a user following the lesson would click.

    Bad is the correctly classified image with the lowest AP: where the model looks
    least at the lungs, which under a shortcut is the shortcut. Good is the correctly
    classified image *of the same class* with the highest AP. Keeping both in one class
    means the pair differs in where the model looks rather than in what the images
    show; on an earlier phantom a cross-class pick lowered test AP from 0.40 to 0.21
    under eXBL, and the same-class pick raised it to 0.47.
    """
    correct = scores["preds"] == labels
    if int(correct.sum()) < 2:
        raise ValueError("fewer than two correctly classified training images: train the model longer before picking")
    ap = scores["ap"]
    bad = int(torch.where(correct, ap, torch.full_like(ap, 2.0)).argmin())
    same_class = correct & (labels == labels[bad])
    good = int(torch.where(same_class, ap, torch.full_like(ap, -1.0)).argmax())
    if good == bad or ap[good] == ap[bad]:
        raise ValueError(
            f"the correctly classified {CLASSES[int(labels[bad])]} images all have the same AP; pick the good and bad explanation by hand"
        )
    return good, bad


def validate_pick(good: int, bad: int, n: int) -> None:
    """Refuse a pick that cannot define a triplet."""
    for role, i in (("good", good), ("bad", bad)):
        if not 0 <= i < n:
            raise ValueError(f"{role} index {i} is out of range: the training split has images 0 to {n - 1}")
    if good == bad:
        raise ValueError(f"image {good} was picked as both the good and the bad explanation; pick two different images")


def pick_step(
    run: runs.Run,
    data: dict[str, Split],
    device: torch.device,
    good: int | None = None,
    bad: int | None = None,
    explainer: str = "gradcam",
    rule: str = "user",
) -> dict:
    """Choose the exemplars (automatically unless given) and write exemplars.json and .png.

    ``explainer`` names the maps the pair was judged on (recorded, so that a pick made on
    occlusion maps says so); ``rule`` says how a given pair was chosen. The automatic
    pick reads the same maps: GradCAM's AP (``auto_pick``), or where occlusion maps
    put their mass (``faithfulness.faithful_pick``), which is what a user looking at
    the faithful map would click when GradCAM hides the shortcut.
    """
    check_ready(run, "pick")
    train = data["train"]
    if (good is None) != (bad is None):
        raise ValueError("give both --good and --bad, or neither for the automatic pick")
    explainers.get(explainer)
    if good is not None:
        validate_pick(good, bad, len(train))
    model = load_model(run, "unrefined", device)
    refine = train_config(run, "refine")
    scores = training_scores(model, train, refine.tau)
    found = None
    if good is None and explainer == explainers.FAITHFUL:
        good, bad, found = faithfulness.faithful_pick(model, train, seed=refine.seed)
        rule = FAITHFUL_PICK_RULE
    elif good is None:
        good, bad = auto_pick(scores, train.labels)
        rule = AUTO_PICK_RULE
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
    runs.write_json(run.file(runs.EXEMPLARS), pick)
    idx = torch.tensor([good, bad])
    labels = [
        f"good #{good} {pick['good']['class']} AP {pick['good']['ap']:.2f}",
        f"bad #{bad} {pick['bad']['class']} AP {pick['bad']['ap']:.2f}",
    ]
    cams = scores["cams"][idx]
    runs.atomic_write_bytes(run.file(runs.EXEMPLARS_PNG), figure_png(cam_grid(train.float_images(idx), [cams], EXEMPLAR_COLUMNS, labels)))
    return pick


def refine_settings(run: runs.Run, overrides: dict | None = None) -> TrainConfig:
    """The run's refinement settings, then the method's own schedule, then ``overrides``, checked.

    The paper's schedule (3 epochs at lr 1e-4 on the demo) suits a loss term that nudges
    the model; a method that changes the data has more to unlearn and says so in
    ``Method.schedule``, as factors on these settings. A command-line or page setting wins.
    """
    return config.scheduled(train_config(run, "refine"), overrides)


def pair_record(pick: dict) -> dict:
    """What a refined checkpoint records of the pair it came from: exemplars.json as it was at the start.

    exemplars.json is rewritten at every new pick, so only the checkpoint can say later
    which pair a model was refined with (Compare labels each model with it).
    """
    return {key: pick[key] for key in ("good", "bad", "rule", "explainer") if key in pick}


def refined_pair(run: runs.Run, name: str) -> dict | None:
    """The pair a refined model's checkpoint recorded (``pair_record``), or None for a model refined before it was recorded."""
    payload = torch.load(run.file(model_file(name)), map_location="cpu", weights_only=True)
    return payload.get("pair")


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
    cfg = refine_settings(run, overrides)
    method = get_method(cfg.method)
    train = data["train"]
    check_feedback(method, train)
    pick = runs.read_json(run.file(runs.EXEMPLARS))
    good, bad = pick["good"]["index"], pick["bad"]["index"]
    validate_pick(good, bad, len(train))
    model = load_model(run, "unrefined", device)
    objective = method.build_objective(model, train, Pair(good, bad), cfg)
    torch.manual_seed(cfg.seed)
    meta = {"pair": pair_record(pick)}
    result = _fit_step(run, "refine", method.name, cfg, model, data, objective, on_event, cancel, device, meta, method=method.name)
    chosen = replace(train_config(run, "refine"), **(overrides or {}))  # the user's choice, without the method's schedule
    if result.status == "done" and chosen != train_config(run, "refine"):
        doc = run.config()
        doc["refine"] = chosen.to_dict()
        runs.write_json(run.file(runs.CONFIG), doc)
    return result


# --------------------------------------------------------------------------- results


@functools.cache
def evaluation_code() -> str:
    """SHA-256 of the code that measures a model (metrics, faithfulness, the explainers): read once per process."""
    files = [Path(metrics_module.__file__), Path(faithfulness.__file__), *sorted(Path(explainers.__file__).parent.glob("*.py"))]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def evaluation_key(run: runs.Run, name: str, tau: float, samples: dict[str, torch.Tensor]) -> str:
    """What one model's metrics depend on: its checkpoint's bytes, the measuring code, the data settings, tau
    and the explained sample. ``evaluate_step`` reuses an entry whose key is unchanged instead of measuring again."""
    digest = hashlib.sha256(run.file(model_file(name)).read_bytes())
    settings = {"code": evaluation_code(), "data": data_fingerprint(run.config()["data"]), "tau": tau}
    settings["samples"] = {split: idx.tolist() for split, idx in samples.items()}
    digest.update(json.dumps(settings, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def _earlier_metrics(run: runs.Run) -> dict:
    """The metrics.json an evaluation may reuse entries of; nothing when there is none or it cannot be read."""
    try:
        return runs.read_json(run.file(runs.METRICS)) if run.has(runs.METRICS) else {}
    except runs.RunError:
        return {}


def evaluate_step(run: runs.Run, data: dict[str, Split], device: torch.device) -> dict:
    """metrics.json: every metric of every model on val, test and (synthetic) shortcut_test, and each refinement's verdict.

    A model measured before, unchanged since (``evaluation_key``), keeps its entry: after a
    refinement only the new model is measured, not the unrefined model and the oracle again.
    """
    check_ready(run, "evaluate")
    tau = train_config(run, "refine").tau
    splits = [s for s in EVAL_SPLITS if s in data]
    explained = [s for s in splits if s in faithfulness.SPLITS]
    samples = {split: faithfulness.sample_indices(len(data[split]), data_config(run).seed) for split in explained}
    models: dict = {}
    keys = {name: evaluation_key(run, name, tau, samples) for name in models_in(run)}
    earlier = _earlier_metrics(run)
    for name in keys:
        if earlier.get("model_keys", {}).get(name) == keys[name] and name in earlier.get("models", {}):
            models[name] = earlier["models"][name]  # this very checkpoint, measured by this code on this data
            continue
        model = load_model(run, name, device)
        models[name] = {}
        for split in splits:
            s = data[split]
            probs, cams = predict_with_cams(model, s.float_images())
            models[name][split] = evaluate_predictions(s.labels, probs.argmax(1), cams, s.masks, tau, s.regions, s.child)
            if split in samples:
                usable = explainers.usable(int(s.images.shape[-1]))
                models[name][split]["by_explainer"] = faithfulness.score_explainers(model, s, samples[split], usable, tau)
    metrics: dict = {"models": models, "explainer_sample": {split: len(idx) for split, idx in samples.items()}, "model_keys": keys}
    if "unrefined" in models and "shortcut_test" in models["unrefined"]:
        metrics["shortcut_gap"] = {name: shortcut_gap(m["test"], m["shortcut_test"]) for name, m in models.items()}
        metrics["verdicts"] = {
            name: shortcut_verdict(models["unrefined"], models[name], models.get("oracle")).to_dict() for name in run.refined()
        }
    if run.has(runs.EXEMPLARS):
        pick = runs.read_json(run.file(runs.EXEMPLARS))
        metrics["exemplars"] = {"good": pick["good"]["index"], "bad": pick["bad"]["index"], "rule": pick["rule"]}
    runs.write_json(run.file(runs.METRICS), metrics)
    return metrics


FIGURE_ROWS_RULE = "Viral Pneumonia test images where the unrefined model looks least at the lungs (lowest AP)"


def default_figure_rows(split: Split, unrefined_ap: torch.Tensor, n: int = 4) -> list[int]:
    """The ``n`` Viral Pneumonia images with the lowest unrefined AP: where the shortcut shows.

    Most Viral Pneumonia CAMs of a model trained from scratch at 128 px are broad and
    central (experiments/shortcut_map.py measures why), so the first few images would not show
    where the shortcut pulls attention. The figure is for looking, not for scoring: the
    rule is printed in its title, and a low-AP selection tends to look better after any
    change (regression to the mean), so Table 1 is what says whether AP went up.
    """
    vp = torch.nonzero(split.labels == VIRAL_PNEUMONIA)[:, 0]
    order = torch.argsort(unrefined_ap[vp], stable=True)
    return vp[order[:n]].tolist()


def figure_step(run: runs.Run, data: dict[str, Split], device: torch.device, rows: list[int] | None = None) -> list[dict]:
    """figure3.png (Viral Pneumonia test images, unrefined and every refined model) and Table 1 as CSV and Markdown."""
    check_ready(run, "figure")
    test = data["test"]
    outside = [r for r in rows or [] if not 0 <= r < len(test)]
    if outside:
        raise ValueError(f"figure row {outside[0]} is out of range: the test split has images 0 to {len(test) - 1}")
    unrefined = load_model(run, "unrefined", device)
    title = None
    if rows is None:
        vp = torch.nonzero(test.labels == VIRAL_PNEUMONIA)[:, 0]
        ap = torch.zeros(len(test))  # only the Viral Pneumonia entries are read
        cams = predict_with_cams(unrefined, test.float_images(vp))[1]
        ap[vp] = activation_precision_scores(cams, test.masks[vp], train_config(run, "refine").tau)
        rows, title = default_figure_rows(test, ap), FIGURE_ROWS_RULE
    names = ["unrefined", *run.refined()]
    x = test.float_images(torch.tensor(rows, dtype=torch.long))
    usable = explainers.usable(int(x.shape[-1]))
    results = {name: faithfulness.explain(unrefined if name == "unrefined" else load_model(run, name, device), x, usable) for name in names}
    labels = figure_row_labels(test, rows, {name: probs.argmax(1) for name, (probs, _) in results.items()})
    cam_sets = {(name, explainer): maps for name, (_, by) in results.items() for explainer, maps in by.items()}
    runs.atomic_write_bytes(run.file(runs.FIGURE3), figure_png(figure3(x, cam_sets, labels, title=title)))
    metrics = runs.read_json(run.file(runs.METRICS)) if run.has(runs.METRICS) else evaluate_step(run, data, device)
    table = table1(run, metrics)
    runs.atomic_write_text(run.file(runs.TABLE1_CSV), table1_csv_text(run, table))
    runs.atomic_write_text(run.file(runs.TABLE1_MD), table1_markdown(table, table1_note(run, metrics)))
    return table


def figure_row_labels(split: Split, rows: list[int], preds: dict[str, torch.Tensor]) -> list[str]:
    """Figure 3's row labels: the image, its true class, and each model's prediction (``preds`` per model, one per row)."""
    return [
        f"#{i} true {CLASSES[int(split.labels[i])]}\n" + "\n".join(f"{model_label(m)}: {CLASSES[int(p[r])]}" for m, p in preds.items())
        for r, i in enumerate(rows)
    ]


def table1(run: runs.Run, metrics: dict) -> list[dict]:
    """Table 1's rows for this run, with the paper's values beside a real-data run."""
    return table1_rows(metrics, paper=isinstance(data_config(run), config.FolderSpec))


def table1_csv_text(run: runs.Run, rows: list[dict]) -> str:
    """table1.csv: the rows, and on each what the unrefined model started from (when recorded)."""
    start = start_weights(run)
    return table1_csv(rows, None if start is None else start.to_dict())


def table1_note(run: runs.Run, metrics: dict | None = None) -> str | None:
    """The lines under Table 1: what the unrefined model started from (when recorded), and which images
    the per-explainer rows ("(sample)") were scored on (when ``metrics`` has them); ``None`` when there is neither."""
    lines = []
    start = start_weights(run)
    if start is not None:
        lines.append(f"Started from {weights.describe(start)}.")
    sample = (metrics or {}).get("explainer_sample")
    if sample:
        where = " and ".join(f"{n} {split.replace('_', '-')}" for split, n in sample.items())
        lines.append(
            f"Rows marked (sample): each explainer's maps of the predicted class on the same {where} images, chosen once "
            "with the run's seed. Deletion is the drop of that class's probability when the map's top 5% is hidden "
            "(larger: the map found more of what the model uses)."
        )
    return " ".join(lines) or None
