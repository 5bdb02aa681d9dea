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

from exbl_core import runs
from exbl_core.data import CLASSES, VIRAL_PNEUMONIA, DataError, Split, SplitSizes, load_entries, make_split, scan_dataset
from exbl_core.figures import EXEMPLAR_COLUMNS, cam_grid, figure3, figure_png, table1_csv, table1_markdown, table1_rows
from exbl_core.gradcam import predict_with_cams
from exbl_core.metrics import activation_precision_scores, evaluate_predictions, shortcut_gap
from exbl_core.model import build_model
from exbl_core.synthetic import SPLITS, SyntheticConfig, generate_split, split_design
from exbl_core.training import EventCallback, FitResult, TrainConfig, TrainingError, compute_exemplars, fit

EVAL_SPLITS = ("val", "test", "shortcut_test")
AUTO_PICK_RULE = (
    "automatic: the correctly classified training image with the highest AP is good; "
    "the correctly classified image of the same class with the lowest AP is bad"
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
    """Data and training settings that belong together."""

    data: SyntheticConfig
    train: TrainConfig
    refine: TrainConfig


# The demo is tuned to show a learned shortcut within minutes on 2 CPU cores: from
# random weights the paper's learning rate of 1e-4 is too slow, so the unrefined model
# trains at 1e-3. Refinement keeps the paper's settings.
DEMO = Preset(SyntheticConfig(), TrainConfig(epochs=14, lr=1e-3), TrainConfig(epochs=3))
QUICK = Preset(
    SyntheticConfig(size=96, n_train=40, n_val=20, n_test=25),
    TrainConfig(epochs=3, lr=1e-3),
    TrainConfig(epochs=1),
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


def prepare_run(data: SyntheticConfig | FolderSpec, train: TrainConfig, refine: TrainConfig) -> PreparedRun:
    """Check every setting and read a data set folder in full, writing nothing.

    So a bad setting, a missing or unreadable mask, or a data set too small for the split
    fails before a run folder exists. With ``skip_bad``, what could not be read is listed
    in split.json and left out of its lists. Synthetic data is generated later, on load.
    """
    check_data(data)
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
        "cam_class": {"display": "predicted", "loss": "true label"},
    }
    return PreparedRun(config, split_doc, loaded)


def write_run(out: str | Path, prepared: PreparedRun) -> runs.Run:
    """Write a prepared run's config.json and split.json; the caller holds the folder's lock."""
    run = runs.create_run(out, prepared.config)
    runs.write_json(run.file(runs.SPLIT), prepared.split)
    return run


def new_run(out: str | Path, data: SyntheticConfig | FolderSpec, train: TrainConfig, refine: TrainConfig) -> runs.Run:
    """Create a run folder with config.json and split.json, in a new or empty folder only."""
    runs.check_target(out)
    prepared = prepare_run(data, train, refine)
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


# --------------------------------------------------------------------------- model


def load_model(run: runs.Run, which: str = "unrefined", device: torch.device | None = None) -> torch.nn.Module:
    """The run's unrefined or refined model, in eval mode, on ``device``."""
    name = {"unrefined": runs.UNREFINED, "refined": runs.REFINED}[which]
    if not run.has(name):
        raise runs.RunError(f"{run.path}: no {which} model yet ({name} is missing)")
    model = build_model(num_classes=len(CLASSES), freeze=False)
    runs.load_checkpoint(run.file(name), model)
    return model.to(device or torch.device("cpu")).eval()


def _checkpoint_writer(run: runs.Run, name: str, phase: str, cfg: TrainConfig, image_size: int):
    """Writes each new best model, with the settings that made it; the first new unrefined.pt
    also drops the files of the run or model it replaces (``runs.replacing``)."""

    def write(state: dict, epoch: int, record: dict) -> None:
        meta = {"phase": phase, "epoch": epoch, "image_size": image_size, "val_loss": record["val_loss"], "settings": cfg.to_dict()}
        runs.save_checkpoint(run.file(name), state, meta)
        if name == runs.UNREFINED:
            runs.settle(run.path)

    return write


def _recorder(run: runs.Run, on_event: EventCallback | None) -> EventCallback:
    def record(event: dict) -> None:
        if event["type"] != "batch_end":
            run.append_history(event)
        if on_event is not None:
            on_event(event)

    return record


def _fit_step(run: runs.Run, phase: str, name: str, cfg: TrainConfig, model, data, exemplars, on_event, cancel, device) -> FitResult:
    """Run ``fit`` with its start recorded in history: the settings this attempt really used."""
    record = _recorder(run, on_event)
    record({"type": "start", "phase": phase, "epochs": cfg.epochs, "settings": cfg.to_dict(), "time": time.time()})
    size = int(data["train"].images.shape[-1])
    writer = _checkpoint_writer(run, name, Path(name).stem, cfg, size)
    result = fit(model, data["train"], data["val"], cfg, exemplars, record, cancel, writer, device, phase=phase)
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
) -> FitResult:
    """Train the unrefined model; unrefined.pt is rewritten at every new best epoch."""
    cfg = train_config(run, "train")
    torch.manual_seed(cfg.seed)
    # Real radiographs start from ImageNet weights when they are cached locally, as in the
    # paper; the synthetic demo always starts from random weights, so it runs the same everywhere.
    model = build_model(num_classes=len(CLASSES), pretrained=isinstance(data_config(run), FolderSpec)).to(device)
    return _fit_step(run, "unrefined", runs.UNREFINED, cfg, model, data, None, on_event, cancel, device)


def training_scores(model: torch.nn.Module, split: Split, tau: float = 5.0) -> dict[str, torch.Tensor]:
    """Predictions, CAMs and per-image AP for a split: what picking and browsing need."""
    probs, cams = predict_with_cams(model, split.float_images())
    return {"probs": probs, "preds": probs.argmax(1), "cams": cams, "ap": activation_precision_scores(cams, split.masks, tau)}


def auto_pick(scores: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[int, int]:
    """The automatic pick: ``(good, bad)`` training-image indices.

    Good is the correctly classified image with the highest AP; bad is the correctly
    classified image *of the same class* with the lowest AP. Keeping both in one class
    matters: our CAMs are broad, so ``E = gray(x) * CAM`` is dominated by the image
    itself, and exemplars from two classes teach the model to look for what tells
    those two images apart. On the synthetic default a cross-class pick lowered test
    AP from 0.40 to 0.21, and the same-class pick raised it to 0.47.
    """
    correct = scores["preds"] == labels
    if int(correct.sum()) < 2:
        raise ValueError("fewer than two correctly classified training images: train the model longer before picking")
    ap = scores["ap"]
    good = int(torch.where(correct, ap, torch.full_like(ap, -1.0)).argmax())
    same_class = correct & (labels == labels[good])
    bad = int(torch.where(same_class, ap, torch.full_like(ap, 2.0)).argmin())
    if good == bad or ap[good] == ap[bad]:
        raise ValueError(
            f"the correctly classified {CLASSES[int(labels[good])]} images all have the same AP; pick the good and bad explanation by hand"
        )
    return good, bad


def validate_pick(good: int, bad: int, n: int) -> None:
    """Refuse a pick that cannot define a triplet."""
    for role, i in (("good", good), ("bad", bad)):
        if not 0 <= i < n:
            raise ValueError(f"{role} index {i} is out of range: the training split has images 0 to {n - 1}")
    if good == bad:
        raise ValueError(f"image {good} was picked as both the good and the bad explanation; pick two different images")


def pick_step(run: runs.Run, data: dict[str, Split], device: torch.device, good: int | None = None, bad: int | None = None) -> dict:
    """Choose the exemplars (automatically unless given) and write exemplars.json and .png."""
    train = data["train"]
    if (good is None) != (bad is None):
        raise ValueError("give both --good and --bad, or neither for the automatic pick")
    if good is not None:
        validate_pick(good, bad, len(train))
    model = load_model(run, "unrefined", device)
    scores = training_scores(model, train, train_config(run, "refine").tau)
    rule = "user" if good is not None else AUTO_PICK_RULE
    if good is None:
        good, bad = auto_pick(scores, train.labels)
    pick = {"rule": rule, "split": "train"}
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
    """The run's refinement settings with ``overrides`` (a command-line or page setting wins), checked."""
    try:
        return replace(train_config(run, "refine"), **(overrides or {}))
    except TypeError as exc:
        raise ValueError(f"unknown refinement setting ({exc})") from exc


def refine_step(
    run: runs.Run,
    data: dict[str, Split],
    device: torch.device,
    on_event: EventCallback | None = None,
    cancel: threading.Event | None = None,
    overrides: dict | None = None,
) -> FitResult:
    """eXBL refinement from the unrefined model; refined.pt is rewritten at every new best epoch.

    ``overrides`` (epochs, lambda_expl, lr, patience, ...) apply to this attempt; history and
    refined.pt record them. config.json takes them only when the step ends with a model, so
    a failed attempt leaves it as it was and a plain retry uses the settings that worked.
    """
    if not run.has(runs.EXEMPLARS):
        raise runs.RunError(f"{run.path}: pick a good and a bad explanation first ({runs.EXEMPLARS} is missing)")
    cfg = refine_settings(run, overrides)
    pick = runs.read_json(run.file(runs.EXEMPLARS))
    train = data["train"]
    good, bad = pick["good"]["index"], pick["bad"]["index"]
    validate_pick(good, bad, len(train))
    model = load_model(run, "unrefined", device)
    x = train.float_images(torch.tensor([good, bad]))
    ex = compute_exemplars(model, (x[0], int(train.labels[good])), (x[1], int(train.labels[bad])), cfg.explanation)
    torch.manual_seed(cfg.seed)
    result = _fit_step(run, "refine", runs.REFINED, cfg, model, data, ex, on_event, cancel, device)
    if result.best_epoch > 0 and cfg != train_config(run, "refine"):
        config = run.config()
        config["refine"] = cfg.to_dict()
        runs.write_json(run.file(runs.CONFIG), config)
    return result


# --------------------------------------------------------------------------- results


def evaluate_step(run: runs.Run, data: dict[str, Split], device: torch.device) -> dict:
    """metrics.json: every metric for both models on val, test and (synthetic) shortcut_test."""
    if not run.has(runs.UNREFINED):
        raise runs.RunError(f"{run.path}: no model to evaluate yet ({runs.UNREFINED} is missing); run train first")
    tau = train_config(run, "refine").tau
    metrics: dict = {}
    for which in ("unrefined", "refined"):
        if not run.has(runs.UNREFINED if which == "unrefined" else runs.REFINED):
            continue
        model = load_model(run, which, device)
        metrics[which] = {}
        for split in (s for s in EVAL_SPLITS if s in data):
            s = data[split]
            probs, cams = predict_with_cams(model, s.float_images())
            metrics[which][split] = evaluate_predictions(s.labels, probs.argmax(1), cams, s.masks, tau)
        if "shortcut_test" in metrics[which]:
            metrics.setdefault("shortcut_gap", {})[which] = shortcut_gap(metrics[which]["test"], metrics[which]["shortcut_test"])
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
    """figure3.png (Viral Pneumonia test images, before and after) and Table 1 as CSV and Markdown."""
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
    idx = torch.tensor(rows, dtype=torch.long)
    x = test.float_images(idx)
    before = predict_with_cams(unrefined, x)
    after = predict_with_cams(load_model(run, "refined", device), x)
    labels = [
        f"{test.names[i]}\ntrue {CLASSES[int(test.labels[i])]}\n"
        f"unref: {CLASSES[int(before[0][r].argmax())]}\neXBL: {CLASSES[int(after[0][r].argmax())]}"
        for r, i in enumerate(rows)
    ]
    runs.atomic_write_bytes(run.file(runs.FIGURE3), figure_png(figure3(x, before[1], after[1], labels, title=title)))
    metrics = runs.read_json(run.file(runs.METRICS)) if run.has(runs.METRICS) else evaluate_step(run, data, device)
    table = table1_rows(metrics)
    runs.atomic_write_text(run.file(runs.TABLE1_CSV), table1_csv(table))
    runs.atomic_write_text(run.file(runs.TABLE1_MD), table1_markdown(table))
    return table
