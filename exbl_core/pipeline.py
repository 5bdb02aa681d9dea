"""The workflow's steps on a run folder: data, train, pick, refine, evaluate, figures.

The command-line interface and the app both call these functions, so a run made in
one can be continued in the other. Each step reads what it needs from the run folder
and writes its results back atomically.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from exbl_core import explainers, faithfulness, runs, weights
from exbl_core.data import CLASSES, VIRAL_PNEUMONIA, DataError, Split, SplitSizes, load_entries, make_split, scan_dataset
from exbl_core.explainers.gradcam import predict_with_cams
from exbl_core.figures import EXEMPLAR_COLUMNS, cam_grid, figure3, figure_png, model_label, table1_csv, table1_markdown, table1_rows
from exbl_core.methods import Pick, check_feedback, get_method
from exbl_core.metrics import activation_precision_scores, evaluate_predictions, shortcut_gap
from exbl_core.model import build_model, freeze_early_blocks
from exbl_core.synthetic import SPLITS, SyntheticConfig, generate_split, oracle_config, split_design
from exbl_core.training import EventCallback, FitResult, TrainConfig, TrainingError, fit
from exbl_core.verdict import shortcut_verdict

EVAL_SPLITS = ("val", "test", "shortcut_test")
AUTO_PICK_RULE = (
    "automatic: the correctly classified training image with the lowest AP is bad; "
    "the correctly classified image of the same class with the highest AP is good"
)


@dataclass(frozen=True)
class FolderSpec:
    """A data set folder in the COVID-19 Radiography Database layout, and how to split it."""

    path: str
    size: int = 224
    train: int = 800  # per class
    val: int = 300
    test: int = 200
    seed: int = 0
    skip_bad: bool = False


@dataclass(frozen=True)
class Preset:
    """Data and training settings that belong together, and what the demo runs with them."""

    data: SyntheticConfig
    train: TrainConfig
    refine: TrainConfig
    methods: tuple[str, ...] = ("exbl",)  # the demo refines with each
    oracle: bool = False  # the demo trains the oracle, so that its verdicts are complete


# The demo is tuned to show a learned shortcut within minutes on 2 CPU cores: from
# random weights the paper's learning rate of 1e-4 is too slow, so the unrefined model
# trains at 1e-3. Refinement keeps the paper's settings, which a method with its own schedule scales.
DEMO = Preset(SyntheticConfig(viral_strength=2.0), TrainConfig(epochs=14, lr=1e-3), TrainConfig(epochs=3), ("exbl", "region-swap"))
QUICK = Preset(
    SyntheticConfig(size=96, n_train=40, n_val=20, n_test=25, viral_strength=2.0),
    TrainConfig(epochs=3, lr=1e-3),
    TrainConfig(epochs=1),
    ("exbl", "region-swap"),
)
PAPER_TRAIN, PAPER_REFINE = TrainConfig(epochs=60), TrainConfig(epochs=100)


# --------------------------------------------------------------------------- data


# Limits that every way into a run (CLI, app, config.json) is checked against, before
# anything is written. Below 16 px nothing of a radiograph is left to learn from.
SIZE_RANGE = (16, 1024)
SEED_RANGE = (0, 2**32 - 1)  # numpy's seeds
MAX_DATA_BYTES = 8 * 2**30  # images and masks of every split, held in memory


def check_data(spec: SyntheticConfig | FolderSpec) -> None:
    """Refuse data settings that would crash, or quietly fill the memory, later on."""
    counts = (spec.n_train, spec.n_val, spec.n_test) if isinstance(spec, SyntheticConfig) else (spec.train, spec.val, spec.test)
    problems = []
    if not SIZE_RANGE[0] <= spec.size <= SIZE_RANGE[1]:
        problems.append(f"image size {spec.size} is outside {SIZE_RANGE[0]} to {SIZE_RANGE[1]} pixels")
    if not SEED_RANGE[0] <= spec.seed <= SEED_RANGE[1]:
        problems.append(f"seed {spec.seed} is outside {SEED_RANGE[0]} to {SEED_RANGE[1]}")
    if min(counts) < 1:
        problems.append(f"images per class {' '.join(map(str, counts))} (train, val, test) must each be at least 1")
    images = 4 * (sum(counts) + (spec.n_test if isinstance(spec, SyntheticConfig) else 0))  # synthetic has two test splits
    if not problems and images * spec.size**2 * 2 > MAX_DATA_BYTES:
        problems.append(f"{images} images at {spec.size} px would take {images * spec.size**2 * 2 / 2**30:.0f} GiB of memory")
    if problems:
        raise ValueError("invalid data setting(s): " + "; ".join(problems))


@dataclass
class PreparedRun:
    """A new run's config.json and split.json contents, and (for a data set folder) its loaded data."""

    config: dict
    split: dict
    data: dict[str, Split] | None


def prepare_run(
    data: SyntheticConfig | FolderSpec, train: TrainConfig, refine: TrainConfig, start: str | Path | None = None
) -> PreparedRun:
    """Check every setting and read a data set folder in full, writing nothing.

    So a bad setting, a missing or unreadable mask, or a data set too small for the split
    fails before a run folder exists. With ``skip_bad``, what could not be read is listed
    in split.json and left out of its lists. Synthetic data is generated later, on load.
    ``start`` is the backbone to train from: ``imagenet``, ``random`` or a weights file
    (``None``: ImageNet for real data when cached, else random; see ``weights.resolve``);
    config.json records the choice with the file's SHA-256 and the frozen blocks.
    """
    check_data(data)
    model_start = weights.resolve(start, real_data=isinstance(data, FolderSpec))
    if isinstance(data, FolderSpec):
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
    config = {
        "data": data_cfg,
        "train": train.to_dict(),
        "refine": refine.to_dict(),
        "model": model_start.to_dict(),
        "cam_class": {"display": "predicted", "loss": "true label"},
    }
    return PreparedRun(config, split_doc, loaded)


def write_run(out: str | Path, prepared: PreparedRun) -> runs.Run:
    """Write a prepared run's config.json and split.json; the caller holds the folder's lock."""
    run = runs.create_run(out, prepared.config)
    runs.write_json(run.file(runs.SPLIT), prepared.split)
    return run


def new_run(
    out: str | Path, data: SyntheticConfig | FolderSpec, train: TrainConfig, refine: TrainConfig, start: str | Path | None = None
) -> runs.Run:
    """Create a run folder with config.json and split.json, in a new or empty folder only."""
    runs.check_target(out)
    prepared = prepare_run(data, train, refine, start)
    with runs.locked(out, create=True):
        return write_run(out, prepared)


def _synthetic_summary(cfg: SyntheticConfig, split: str) -> dict:
    labels, child = split_design(split, cfg)
    return {"labels": labels.tolist(), "child": child.tolist()}


def data_config(run: runs.Run) -> SyntheticConfig | FolderSpec:
    """The run's data settings, checked: a hand-edited config.json gets an error naming it."""
    try:
        cfg = dict(run.config()["data"])
        kinds = {"synthetic": SyntheticConfig, "folder": FolderSpec}
        source = cfg.pop("source", None)
        if source not in kinds:
            raise ValueError(f"source {source!r} is neither 'synthetic' nor 'folder'")
        spec = kinds[source](**cfg)
        check_data(spec)
    except runs.RunError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise runs.RunError(f"{run.file(runs.CONFIG)}: its 'data' settings are not valid ({_reason(exc)})") from exc
    return spec


def _reason(exc: Exception) -> str:
    return f"missing {exc}" if isinstance(exc, KeyError) else str(exc)


def check_config(run: runs.Run) -> runs.Run:
    """Refuse a config.json of the wrong shape now, with one line naming it, instead of deep in a step."""
    data_config(run)
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
    entries = [tuple(e) for e in runs.read_json(run.file(runs.SPLIT))[split]]
    return load_entries(spec.path, entries, spec.size, skip_bad=spec.skip_bad)


def load_data(run: runs.Run, splits: tuple[str, ...] | None = None) -> dict[str, Split]:
    return {s: load_split(run, s) for s in (splits or split_names(run))}


def train_config(run: runs.Run, phase: str) -> TrainConfig:
    """The run's training (``phase`` "train") or refinement ("refine") settings, checked."""
    try:
        return TrainConfig(**run.config()[phase])
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
    """One of the run's models (see ``models_in``), in eval mode, on ``device``."""
    name = model_file(which)
    if not run.has(name):
        raise runs.RunError(f"{run.path}: no {which} model yet ({name} is missing)")
    model = build_model(num_classes=len(CLASSES), freeze=False)
    runs.load_checkpoint(run.file(name), model)
    return model.to(device or torch.device("cpu")).eval()


def can_train_oracle(run: runs.Run) -> bool:
    """An oracle needs synthetic data (only a phantom can redraw the confounder) and is trained once."""
    return isinstance(data_config(run), SyntheticConfig) and not run.has(runs.ORACLE)


def oracle_data(run: runs.Run) -> dict[str, Split]:
    """The oracle's training and validation splits: the same phantoms, child drawn independently of the class."""
    spec = data_config(run)
    if not isinstance(spec, SyntheticConfig):
        raise DataError("the oracle needs synthetic data: only a phantom can redraw child anatomy independently of the class")
    return {s: generate_split(s, oracle_config(spec)) for s in ("train", "val")}


def _checkpoint_writer(run: runs.Run, name: str, phase: str, cfg: TrainConfig, image_size: int):
    """Writes each new best model, with the settings that made it; the first new unrefined.pt
    also drops the files of the run or model it replaces (``runs.replacing``)."""

    def write(state: dict, epoch: int, record: dict) -> None:
        meta = {"phase": phase, "epoch": epoch, "image_size": image_size, "val_loss": record["val_loss"], "settings": cfg.to_dict()}
        runs.save_checkpoint(run.file(name), state, meta)
        if name == runs.UNREFINED:
            runs.settle(run.path)

    return write


def _recorder(run: runs.Run, on_event: EventCallback | None, **tags) -> EventCallback:
    def record(event: dict) -> None:
        event = {**event, **tags}
        if event["type"] != "batch_end":
            run.append_history(event)
        if on_event is not None:
            on_event(event)

    return record


def _fit_step(
    run: runs.Run, phase: str, name: str, cfg: TrainConfig, model, data, objective, on_event, cancel, device, **tags
) -> FitResult:
    """Run ``fit`` with its start recorded in history: the settings this attempt really used.

    ``tags`` (a refinement's ``method``) go into every event, so that the history tells
    the attempts of several methods apart.
    """
    record = _recorder(run, on_event, **tags)
    record({"type": "start", "phase": phase, "epochs": cfg.epochs, "settings": cfg.to_dict(), "time": time.time()})
    size = int(data["train"].images.shape[-1])
    writer = _checkpoint_writer(run, name, Path(name).stem, cfg, size)
    result = fit(model, data["train"], data["val"], cfg, objective, record, cancel, writer, device, phase=phase)
    if result.status == "done" and result.best_epoch == 0:
        raise TrainingError(
            f"{phase}: no epoch reached a finite validation loss, so {run.file(name)} was not written; try a lower learning rate"
        )
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
    start = start_weights(run) or weights.resolve(None, real_data=isinstance(data_config(run), FolderSpec))
    backbone = weights.load_recorded(start)
    torch.manual_seed(cfg.seed)
    model = build_model(num_classes=len(CLASSES), backbone=backbone, freeze=False)
    freeze_early_blocks(model, start.frozen_blocks)
    model = model.to(device)
    return _fit_step(run, role, model_file(role), cfg, model, fit_data, None, on_event, cancel, device)


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
    occlusion maps says so); ``rule`` says how a given pair was chosen.
    """
    train = data["train"]
    if (good is None) != (bad is None):
        raise ValueError("give both --good and --bad, or neither for the automatic pick")
    explainers.get(explainer)
    if good is not None:
        validate_pick(good, bad, len(train))
    model = load_model(run, "unrefined", device)
    scores = training_scores(model, train, train_config(run, "refine").tau)
    if good is None:
        good, bad = auto_pick(scores, train.labels)
        rule, explainer = AUTO_PICK_RULE, "gradcam"
    pick = {"rule": rule, "split": "train", "explainer": explainer}
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
    return scheduled(train_config(run, "refine"), overrides)


def scheduled(base: TrainConfig, overrides: dict | None = None) -> TrainConfig:
    """``base`` refinement settings with the chosen method's schedule, then ``overrides``, applied (see ``refine_settings``)."""
    overrides = overrides or {}
    try:
        chosen = replace(base, **overrides)
    except TypeError as exc:
        raise ValueError(f"unknown refinement setting ({exc})") from exc
    factors = {k: f for k, f in get_method(chosen.method).schedule.items() if k not in overrides}
    scaled = {k: getattr(chosen, k) * f for k, f in factors.items()}
    if "epochs" in scaled:
        scaled["epochs"] = max(1, round(scaled["epochs"]))
    return replace(chosen, **scaled)


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
    and the checkpoint record them. config.json takes them only when the step ends with a
    model, so a failed attempt leaves it as it was and a plain retry uses the settings that worked.
    """
    if not run.has(runs.EXEMPLARS):
        raise runs.RunError(f"{run.path}: pick a good and a bad explanation first ({runs.EXEMPLARS} is missing)")
    cfg = refine_settings(run, overrides)
    method = get_method(cfg.method)
    train = data["train"]
    check_feedback(method, train)
    pick = runs.read_json(run.file(runs.EXEMPLARS))
    good, bad = pick["good"]["index"], pick["bad"]["index"]
    validate_pick(good, bad, len(train))
    model = load_model(run, "unrefined", device)
    objective = method.prepare(model, train, Pick(good, bad), cfg)
    torch.manual_seed(cfg.seed)
    result = _fit_step(run, "refine", model_file(method.name), cfg, model, data, objective, on_event, cancel, device, method=method.name)
    chosen = replace(train_config(run, "refine"), **(overrides or {}))  # the user's choice, without the method's schedule
    if result.best_epoch > 0 and chosen != train_config(run, "refine"):
        config = run.config()
        config["refine"] = chosen.to_dict()
        runs.write_json(run.file(runs.CONFIG), config)
    return result


# --------------------------------------------------------------------------- results


def evaluate_step(run: runs.Run, data: dict[str, Split], device: torch.device) -> dict:
    """metrics.json: every metric of every model on val, test and (synthetic) shortcut_test, and each refinement's verdict."""
    if not run.has(runs.UNREFINED):
        raise runs.RunError(f"{run.path}: no model to evaluate yet ({runs.UNREFINED} is missing); run train first")
    tau = train_config(run, "refine").tau
    splits = [s for s in EVAL_SPLITS if s in data]
    explained = [s for s in splits if s in faithfulness.SPLITS]
    samples = {split: faithfulness.sample_indices(len(data[split]), data_config(run).seed) for split in explained}
    models: dict = {}
    for name in models_in(run):
        model = load_model(run, name, device)
        models[name] = {}
        for split in splits:
            s = data[split]
            probs, cams = predict_with_cams(model, s.float_images())
            models[name][split] = evaluate_predictions(s.labels, probs.argmax(1), cams, s.masks, tau, s.regions, s.child)
            if split in samples:
                usable = explainers.usable(int(s.images.shape[-1]))
                models[name][split]["by_explainer"] = faithfulness.score_explainers(model, s, samples[split], usable, tau)
    metrics: dict = {"models": models, "explainer_sample": {split: len(idx) for split, idx in samples.items()}}
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
    central (bench/shortcut_map.py measures why), so the first few images would not show
    where the shortcut pulls attention. The figure is for looking, not for scoring: the
    rule is printed in its title, and a low-AP selection tends to look better after any
    change (regression to the mean), so Table 1 is what says whether AP went up.
    """
    vp = torch.nonzero(split.labels == VIRAL_PNEUMONIA)[:, 0]
    order = torch.argsort(unrefined_ap[vp], stable=True)
    return vp[order[:n]].tolist()


def figure_step(run: runs.Run, data: dict[str, Split], device: torch.device, rows: list[int] | None = None) -> list[dict]:
    """figure3.png (Viral Pneumonia test images, unrefined and every refined model) and Table 1 as CSV and Markdown."""
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
    return table1_rows(metrics, paper=isinstance(data_config(run), FolderSpec))


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
