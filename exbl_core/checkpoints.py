"""Model checkpoints: weights with their architecture, classes and format version, written atomically.

They are loaded with ``weights_only=True`` after these are checked: a file from another
model, another version or a pickle that runs code gets a clear error, never a silent mix.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from exbl_core.data import CLASSES
from exbl_core.errors import CheckpointError
from exbl_core.files import atomic_write_bytes
from exbl_core.load_failure import describe_load_failure
from exbl_core.model import ARCH

CHECKPOINT_FORMAT = "exbl-checkpoint"
FORMAT_VERSION = 2  # 2: one refined checkpoint per method, an optional oracle


def save_checkpoint(path: str | Path, state_dict: dict, meta: dict) -> None:
    """Save weights with the metadata ``load_checkpoint`` checks, atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": FORMAT_VERSION,
        "arch": ARCH,
        "classes": list(CLASSES),
        **meta,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, model: nn.Module) -> dict:
    """Load weights into ``model`` after checking format, architecture and classes.

    Returns the checkpoint's metadata (everything but the weights).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, or a pickle that would run code
        raise CheckpointError(f"{path}: cannot be loaded safely as a checkpoint ({describe_load_failure(path)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an eXBL Studio checkpoint")
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('version')}, this tool reads version {FORMAT_VERSION}")
    if payload.get("arch") != ARCH:
        raise CheckpointError(f"{path}: checkpoint is for architecture {payload.get('arch')!r}, expected {ARCH!r}")
    classes = payload.get("classes")
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint holds no weights")
    out_features = model.classifier[-1].out_features if hasattr(model, "classifier") else None
    head = state.get(f"classifier.{len(model.classifier) - 1}.weight") if out_features is not None else None
    n_classes = head.shape[0] if isinstance(head, torch.Tensor) else len(classes or [])
    if classes is None or (out_features is not None and (len(classes) != out_features or n_classes != out_features)):
        raise CheckpointError(f"{path}: checkpoint has {n_classes} classes, the model has {out_features}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        # torch puts the useful part (missing, unexpected or mis-sized keys) after the first line.
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:])[:300]
        raise CheckpointError(f"{path}: weights do not fit this model, so it is from another architecture ({detail})") from exc
    return {k: v for k, v in payload.items() if k != "state_dict"}
