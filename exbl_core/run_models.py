"""A run's model files, and what each checkpoint records of the run it belongs to.

A checkpoint names its role, its run's id and a fingerprint of its data settings, so a
swapped file, another run's model or a model for other data is refused on load instead
of being measured as this run's.
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch

from exbl_core import checkpoints, errors, runs, weights
from exbl_core.data import CLASSES
from exbl_core.methods import METHODS
from exbl_core.model import build_model

log = logging.getLogger(__name__)


def start_weights(run: runs.Run) -> weights.StartWeights | None:
    """The weights the run's unrefined model starts from, as config.json records them.

    ``None`` for a run created before config.json recorded them.
    """
    recorded = run.config().get("model")
    return None if recorded is None else weights.StartWeights(**recorded)


def model_file(name: str) -> str:
    """The checkpoint of a model of the run: ``unrefined``, ``oracle`` or a method's name."""
    return {"unrefined": runs.UNREFINED, "oracle": runs.ORACLE}.get(name) or runs.refined_file(name)


def models_in(run: runs.Run) -> list[str]:
    """Every model the run holds: unrefined, oracle (when trained), then each refined method."""
    return [m for m in ("unrefined", "oracle") if run.has(model_file(m))] + refined(run)


def refined(run: runs.Run) -> list[str]:
    """The methods this run holds a refined checkpoint of, in the registry's order (the paper's first)."""
    return [m for m in METHODS if run.has(runs.refined_file(m))]


def load_model(run: runs.Run, which: str = "unrefined", device: torch.device | None = None) -> torch.nn.Module:
    """One of the run's models (see ``models_in``), in eval mode, on ``device``; checked to be that model of this run."""
    name = model_file(which)
    if not run.has(name):
        raise errors.RunError(f"{run.path}: no {which} model yet ({name} is missing)")
    model = build_model(num_classes=len(CLASSES), freeze=False)
    meta = checkpoints.load_checkpoint(run.file(name), model)
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
        raise errors.CheckpointError(f"{path}: {'; '.join(problems)}; it was not loaded")
    missing = [f for f in IDENTITY_FIELDS if f not in meta]
    if missing:
        log.warning("%s: written before checkpoints recorded their model, run and data, so it cannot be checked against this run", path)
