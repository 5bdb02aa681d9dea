"""The shipped example's model files: fp16 weights with what they are, written and read back safely.

An asset holds a trained model's weights as fp16 (half the bytes; reloaded to fp32 it
scores as the trained model within a few images) beside its role, settings and data
fingerprint, saved with ``torch.save`` and read only with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from exbl_core import checkpoints, run_models, runs
from exbl_core.data import CLASSES
from exbl_core.errors import AssetError
from exbl_core.load_failure import describe_load_failure
from exbl_core.model import ARCH, build_model

ASSET_FORMAT = "exbl-asset"
VERSION = 1  # of the asset files and of manifest.json
BUILD_COMMAND = "python -m exbl_core assets build"


def fix(path: Path, problem: str) -> AssetError:
    """The error for an asset that is missing, altered or made for other settings: it names the file and the fix."""
    return AssetError(f"{path}: {problem}; run '{BUILD_COMMAND} --overwrite' to make the shipped example again")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def payload_bytes(run: runs.Run, role: str) -> bytes:
    """One trained model of ``run`` as an fp16 asset: its weights and what it is, saved with ``torch.save``."""
    model = build_model(num_classes=len(CLASSES), freeze=False)
    meta = checkpoints.load_checkpoint(run.file(run_models.model_file(role)), model)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    payload = {
        "format": ASSET_FORMAT,
        "version": VERSION,
        "arch": ARCH,
        "classes": list(CLASSES),
        "role": role,
        "epoch": meta["epoch"],
        "val_loss": meta["val_loss"],
        "image_size": meta["image_size"],
        "data_sha256": meta["data_sha256"],
        "settings": meta["settings"],
        "state_dict": {k: v.contiguous() for k, v in state.items()},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def read_payload(path: Path) -> dict:
    """An asset file loaded with ``weights_only=True``, checked to be one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, random bytes, or a pickle that would run code
        raise fix(path, f"cannot be loaded safely ({describe_load_failure(path)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != ASSET_FORMAT or not isinstance(payload.get("state_dict"), dict):
        raise fix(path, "is not a shipped-example model")
    return payload


def fp32_model(payload: dict, path: Path) -> torch.nn.Module:
    """An asset's fp16 weights in an fp32 model, in eval mode: how every use of the example reads them."""
    model = build_model(num_classes=len(CLASSES), freeze=False)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    except RuntimeError as exc:
        raise fix(path, "its weights do not fit this model") from exc
    return model.eval()


def load(directory: Path, role: str) -> tuple[torch.nn.Module, dict]:
    """The asset ``role`` as an fp32 model in eval mode, and its metadata (everything but the weights)."""
    path = directory / run_models.model_file(role)
    payload = read_payload(path)
    return fp32_model(payload, path), {k: v for k, v in payload.items() if k != "state_dict"}
