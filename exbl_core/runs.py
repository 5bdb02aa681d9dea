"""A run folder on disk: config, split, checkpoints, exemplars, history, metrics, figures.

Every write goes to a temporary file in the same folder and is then renamed over the
target with ``os.replace``, so a crash or a full disk never leaves a half-written
checkpoint or JSON file behind: the previous version stays intact. Checkpoints carry
their architecture, classes and format version, and are loaded with
``weights_only=True``: a file from another model, another version or a pickle that
runs code gets a clear error, never a silent mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from exbl_core.data import CLASSES
from exbl_core.model import ARCH

RUN_FORMAT = "exbl-run"
CHECKPOINT_FORMAT = "exbl-checkpoint"
FORMAT_VERSION = 2  # 2: one refined checkpoint per method, an optional oracle

CONFIG = "config.json"
SPLIT = "split.json"
UNREFINED = "unrefined.pt"
ORACLE = "oracle.pt"
EXEMPLARS = "exemplars.json"
EXEMPLARS_PNG = "exemplars.png"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
FIGURE3 = "figure3.png"
TABLE1_CSV = "table1.csv"
TABLE1_MD = "table1.md"


def refined_file(method: str) -> str:
    """The refined checkpoint of one method: a run can hold one per method, side by side."""
    return f"refined-{method}.pt"


class RunError(ValueError):
    """A run folder that is missing, incomplete or written by an incompatible version."""


class CheckpointError(ValueError):
    """A checkpoint that is unreadable or belongs to another model."""


class WriteError(RunError):
    """A run file could not be written (disk full, read-only, no permission); its previous version is intact."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``.

    Any OS failure (a full disk, a read-only folder) becomes a ``WriteError`` naming the
    file; the temporary file is removed and the previous version of ``path`` is untouched.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise WriteError(f"{path}: could not be written ({exc.strerror or exc}); its previous version, if any, is unchanged") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RunError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from exc


def save_checkpoint(path: str | Path, state_dict: dict, meta: dict) -> None:
    """Save weights with the metadata ``load_checkpoint`` checks, atomically."""
    import io

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
        raise CheckpointError(f"{path}: cannot be loaded safely as a checkpoint ({describe_load_failure(exc)})") from exc
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


def describe_load_failure(exc: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused a file, instead of torch's page of advice."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it holds a pickled {found.group(1)}, which could run code; it was refused and nothing in it ran"
    if "WeightsUnpickler" in text or "Unsupported operand" in text:
        return "not a PyTorch checkpoint, or one holding objects other than tensors; refused without running anything"
    if isinstance(exc, EOFError) or "zip archive" in text or "central directory" in text:
        return "the file is truncated or corrupted"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass(frozen=True)
class Run:
    """A run folder. Creating the object touches nothing; ``open_run`` checks the folder."""

    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).is_file()

    @property
    def name(self) -> str:
        return self.path.name

    def config(self) -> dict:
        return read_json(self.file(CONFIG))

    def append_history(self, event: dict) -> None:
        """One event per line. An append is not atomic, so readers skip a torn last line."""
        try:
            with open(self.file(HISTORY), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(event) + "\n")
        except OSError as exc:
            raise WriteError(f"{self.file(HISTORY)}: could not be appended to ({exc.strerror or exc})") from exc

    def history(self) -> list[dict]:
        if not self.has(HISTORY):
            return []
        events = []
        for line in self.file(HISTORY).read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def refined(self) -> list[str]:
        """The methods this run holds a refined checkpoint of, in file-name order."""
        return sorted(p.name[len("refined-") : -len(".pt")] for p in self.path.glob(refined_file("*")) if p.is_file())

    def stage(self) -> str:
        """How far the run has come: new, trained, picked, refined or evaluated."""
        refined = bool(self.refined())
        if self.has(METRICS) and refined:
            return "evaluated"
        if refined:
            return "refined"
        for name, stage in ((EXEMPLARS, "picked"), (UNREFINED, "trained")):
            if self.has(name):
                return stage
        return "new"


def create_run(path: str | Path, config: dict, overwrite: bool = False) -> Run:
    """Make a run folder and write its config.json (with format and version stamped in)."""
    run = Run(Path(path))
    if run.has(CONFIG) and not overwrite:
        raise RunError(f"{run.path}: a run already exists here; choose another --out or remove it")
    run.path.mkdir(parents=True, exist_ok=True)
    for stale in (UNREFINED, ORACLE, EXEMPLARS, EXEMPLARS_PNG, HISTORY, METRICS, FIGURE3, TABLE1_CSV, TABLE1_MD, SPLIT):
        run.file(stale).unlink(missing_ok=True)
    for method in run.refined():
        run.file(refined_file(method)).unlink(missing_ok=True)
    write_json(run.file(CONFIG), {"format": RUN_FORMAT, "version": FORMAT_VERSION, "arch": ARCH, "classes": list(CLASSES), **config})
    return run


def open_run(path: str | Path) -> Run:
    """Open an existing run folder, refusing one written by another version or model."""
    run = Run(Path(path))
    if not run.path.is_dir():
        raise RunError(f"{run.path}: run folder does not exist")
    if not run.has(CONFIG):
        raise RunError(f"{run.path}: not a run folder (no {CONFIG})")
    cfg = run.config()
    if cfg.get("format") != RUN_FORMAT or cfg.get("version") != FORMAT_VERSION:
        raise RunError(
            f"{run.path}: run written by an incompatible version (format {cfg.get('format')!r} v{cfg.get('version')}); start a new run"
        )
    if cfg.get("arch") != ARCH or cfg.get("classes") != list(CLASSES):
        raise RunError(f"{run.path}: run is for another model ({cfg.get('arch')!r}, classes {cfg.get('classes')})")
    return run


def list_runs(root: str | Path) -> list[Run]:
    """Run folders under ``root`` that this version can open, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for p in root.iterdir():
        try:
            runs.append(open_run(p))
        except RunError:
            continue
    return sorted(runs, key=lambda r: r.file(CONFIG).stat().st_mtime, reverse=True)
