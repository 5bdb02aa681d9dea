"""Writing and reading a run's files so that a crash or a full disk never leaves half a file.

Every write goes to a temporary file in the same folder and is then renamed over the
target with ``os.replace``: the previous version stays intact until the new one is whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from exbl_core.errors import RunError, WriteError


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
    """Strict JSON only: ``Infinity`` or ``NaN`` in a settings file would break every later reader."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except ValueError as exc:
        raise RunError(f"{path}: holds a value that is not a finite number ({exc}); nothing was written") from exc
    atomic_write_text(path, text + "\n")


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``; anything else (a list, a number, a folder) is a ``RunError`` naming it."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RunError(f"{path}: file not found") from exc
    except IsADirectoryError as exc:
        raise RunError(f"{path}: is a folder, not a file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise RunError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def promote(partial: str | Path, final: str | Path) -> None:
    """Move a finished attempt's partial checkpoint onto the model's file in one ``os.replace``."""
    try:
        os.replace(partial, final)
    except OSError as exc:
        reason = exc.strerror or exc
        raise WriteError(f"{final}: the finished model could not be moved into place from {Path(partial).name} ({reason})") from exc
