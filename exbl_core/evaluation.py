"""What a model's metrics depend on, so that an evaluation measures only what changed.

metrics.json keeps a key per model (its weights, the measuring code, the data settings, tau
and the explained sample); an entry whose key is unchanged is reused. The key reads the
weights, not the checkpoint's bytes, so the shipped example's measured entries (assets/)
stay valid in every run it is copied into, although each copy records its own run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch

from exbl_core import errors, explainers, faithfulness, files, run_models, runs
from exbl_core import metrics as metrics_module
from exbl_core.data import Split
from exbl_core.explainers.gradcam import predict_with_cams

EVAL_SPLITS = ("val", "test", "shortcut_test")


@functools.cache
def evaluation_code() -> str:
    """SHA-256 of the code that measures a model (metrics, faithfulness, the explainers): read once per process."""
    files = [Path(metrics_module.__file__), Path(faithfulness.__file__), *sorted(Path(explainers.__file__).parent.glob("*.py"))]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the model's parameters and buffers by name, in the standard memory layout
    (a channels_last copy of the same weights hashes the same)."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def evaluation_key(run: runs.Run, model: torch.nn.Module, tau: float, samples: dict[str, torch.Tensor]) -> str:
    """What one model's metrics depend on: its weights, the measuring code, the data settings, tau and the
    explained sample. ``evaluate_step`` reuses an entry whose key is unchanged instead of measuring again."""
    digest = hashlib.sha256(weights_digest(model).encode("utf-8"))
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


def reusable_entry(earlier: dict, name: str, key: str) -> dict | None:
    """``earlier``'s entry for ``name`` when its key is ``key`` (these very weights, measured by this code on
    this data), else None."""
    if earlier.get("model_keys", {}).get(name) == key and name in earlier.get("models", {}):
        return earlier["models"][name]
    return None


def measure(model: torch.nn.Module, data: dict[str, Split], samples: dict[str, torch.Tensor], tau: float) -> dict:
    """One model's metrics.json entry: per split, the paper's metrics from GradCAM over every image and,
    on the splits in ``samples``, each usable explainer's scores on that sample (``by_explainer``)."""
    entry = {}
    for split, s in data.items():
        probs, cams = predict_with_cams(model, s.float_images())
        entry[split] = metrics_module.evaluate_predictions(s.labels, probs.argmax(1), cams, s.masks, tau, s.regions, s.child)
        if split in samples:
            usable = explainers.usable(int(s.images.shape[-1]))
            idx = samples[split]
            entry[split]["by_explainer"] = faithfulness.score_explainers(model, s, idx, usable, tau, (probs[idx], cams[idx]))
    return entry
