"""A run's settings and data: a new run made from checked settings, and config.json and split.json read back.

Every step starts here: the data splits (regenerated phantoms, or a data set folder's
images as split.json lists them) and the training and refinement settings, each checked
against ``config``'s rules so that a hand-edited file gets one line naming it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, overload

from exbl_core import config, errors, files, runs, weights
from exbl_core.data import CLASSES, DataError, Split, SplitSizes, load_entries, make_split, scan_dataset
from exbl_core.synthetic import SPLITS, SyntheticConfig, generate_split, oracle_config, split_design


@dataclass
class PreparedRun:
    """A new run's config.json and split.json contents, and (for a data set folder) its loaded data."""

    config: dict
    split: dict
    data: dict[str, Split] | None


def prepare_run(
    data: config.DataSpec, train: config.TrainConfig, refine: config.RefineConfig, start: str | Path | None = None
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
    files.write_json(run.file(runs.SPLIT), prepared.split)
    return run


def new_run(
    out: str | Path, data: config.DataSpec, train: config.TrainConfig, refine: config.RefineConfig, start: str | Path | None = None
) -> runs.Run:
    """Create a run folder with config.json and split.json, in a new or empty folder only."""
    runs.check_target(out)
    prepared = prepare_run(data, train, refine, start)
    with runs.locked(out, create=True):
        return write_run(out, prepared)


def _synthetic_summary(cfg: SyntheticConfig, split: str) -> dict:
    labels, child = split_design(split, cfg)
    return {"labels": labels.tolist(), "child": child.tolist()}


def data_config(run: runs.Run) -> config.DataSpec:
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
    except errors.RunError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.RunError(f"{run.file(runs.CONFIG)}: its 'data' settings are not valid ({_reason(exc)})") from exc
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
    entries = files.read_json(path).get(split)
    if not isinstance(entries, list):
        raise errors.RunError(f"{path}: has no list of {split} images")
    for i, entry in enumerate(entries):
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)
        label = entry[0] if ok else None
        if not ok or not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(CLASSES):
            raise errors.RunError(
                f"{path}: {split} entry {i} is {json.dumps(entry)}; each must be [label, image path] with a label 0 to {len(CLASSES) - 1}"
            )
    return [(label, rel) for label, rel in entries]


def load_data(run: runs.Run, splits: tuple[str, ...] | None = None) -> dict[str, Split]:
    return {s: load_split(run, s) for s in (splits or split_names(run))}


@overload
def train_config(run: runs.Run, phase: Literal["train"]) -> config.TrainConfig: ...
@overload
def train_config(run: runs.Run, phase: Literal["refine"]) -> config.RefineConfig: ...
def train_config(run: runs.Run, phase: Literal["train", "refine"]) -> config.TrainConfig:
    """The run's training (``phase`` "train": a ``TrainConfig``) or refinement ("refine": a ``RefineConfig``) settings, checked.

    A ``train`` section written before the two were separate types also holds refinement
    settings; they are dropped (``TrainConfig.from_dict``), so such a run keeps training.
    """
    try:
        settings = run.config()[phase]
        if not isinstance(settings, dict):
            raise TypeError(f"expected an object, found {type(settings).__name__}")
        return config.SECTIONS[phase].from_dict(settings)
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.RunError(f"{run.file(runs.CONFIG)}: its {phase!r} settings are not valid ({_reason(exc)})") from exc


def can_train_oracle(run: runs.Run) -> bool:
    """An oracle needs synthetic data (only a phantom can redraw the confounder) and is trained once."""
    return isinstance(data_config(run), SyntheticConfig) and not run.has(runs.ORACLE)


def oracle_data(run: runs.Run) -> dict[str, Split]:
    """The oracle's training and validation splits: the same phantoms, child drawn independently of the class."""
    spec = data_config(run)
    if not isinstance(spec, SyntheticConfig):
        raise DataError("the oracle needs synthetic data: only a phantom can redraw child anatomy independently of the class")
    return {s: generate_split(s, oracle_config(spec)) for s in ("train", "val")}


def refine_settings(run: runs.Run, overrides: dict | None = None) -> config.RefineConfig:
    """The run's refinement settings, then the method's own schedule, then ``overrides``, checked.

    The paper's schedule (3 epochs at lr 1e-4 on the demo) suits a loss term that nudges
    the model; a method that changes the data has more to unlearn and says so in
    ``Method.schedule``, as factors on these settings. A command-line or page setting wins.
    """
    return config.scheduled(train_config(run, "refine"), overrides)
