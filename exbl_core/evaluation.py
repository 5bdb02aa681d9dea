"""What a model's metrics depend on, so that an evaluation measures only what changed.

metrics.json keeps a key per model (its checkpoint's bytes, the measuring code, the data
settings, tau and the explained sample); an entry whose key is unchanged is reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

from exbl_core import errors, explainers, faithfulness, files, run_models, runs
from exbl_core import metrics as metrics_module

EVAL_SPLITS = ("val", "test", "shortcut_test")


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
    digest = hashlib.sha256(run.file(run_models.model_file(name)).read_bytes())
    settings = {"code": evaluation_code(), "data": run_models.data_fingerprint(run.config()["data"]), "tau": tau}
    settings["samples"] = {split: idx.tolist() for split, idx in samples.items()}
    digest.update(json.dumps(settings, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def earlier_metrics(run: runs.Run) -> dict:
    """The metrics.json an evaluation may reuse entries of; nothing when there is none or it cannot be read."""
    try:
        return files.read_json(run.file(runs.METRICS)) if run.has(runs.METRICS) else {}
    except errors.RunError:
        return {}
