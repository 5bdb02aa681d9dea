"""A run folder on disk: config, split, checkpoints, the pair, history, metrics, figures, and its lock.

Its files are written atomically (``files``) and its models are checkpoints (``checkpoints``).
The tool owns only the files it names below (``RUN_FILES``), in folders marked as runs
by their config.json: it never writes into, or deletes from, a folder that is not a
run, and never touches a file it did not name. One writer at a time holds a run's
lock (``locked``); replacing a run or its model first moves the old files aside
(``set_aside``) and drops them only once the new model has finished training.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from exbl_core import checkpoints, files
from exbl_core.data import CLASSES
from exbl_core.errors import RunError, WriteError
from exbl_core.method_names import NAMES
from exbl_core.model import ARCH

RUN_FORMAT = "exbl-run"  # its version is the checkpoints' (``checkpoints.FORMAT_VERSION``)

CONFIG = "config.json"
SPLIT = "split.json"
UNREFINED = "unrefined.pt"
ORACLE = "oracle.pt"
PAIR = "pair.json"  # the two clicks: the good and the bad exemplar, and how they were chosen
PAIR_PNG = "pair.png"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
FIGURE3 = "figure3.png"
TABLE1_CSV = "table1.csv"
TABLE1_MD = "table1.md"


# The pair's files had other names in runs made before; such a run keeps them (``Run.file``).
FORMER_NAMES = {PAIR: "exemplars.json", PAIR_PNG: "exemplars.png"}


def refined_file(method: str) -> str:
    """The refined checkpoint of one method: a run can hold one per method, side by side."""
    return f"refined-{method}.pt"


def partial_file(name: str) -> str:
    """Where an attempt at ``name`` keeps its best epoch until it finishes (``refined-exbl.partial.pt``).

    Only a finished attempt is moved onto ``name``, so an interrupted one never replaces
    a finished model; the partial file is never loaded as the model's result.
    """
    return f"{name.removesuffix('.pt')}.partial.pt"


# A model's file: unrefined.pt, oracle.pt or refined-<method>.pt for a method of ours, and the partial
# file an attempt at it writes first. The names come from method_names, not the registry.
_REFINED = "refined-(?:" + "|".join(map(re.escape, NAMES)) + ")"
_MODEL = rf"(?:unrefined|oracle|{_REFINED})(?:\.partial)?\.pt"


def _files(*names: str) -> re.Pattern:
    """A pattern that a file's whole name matches when it is one of the models' files or of ``names``."""
    return re.compile("|".join([_MODEL, *map(re.escape, names)]))


# The models whose attempts are always staged in a partial file. unrefined.pt is staged only
# when it replaces a finished one: replacing it replaces the whole run, which ``replacing``
# keeps aside until the new model finishes; a first training keeps its best epoch in place.
STAGED_FILES = re.compile(rf"(?:oracle|{_REFINED})\.pt")
# Every file a run folder may hold that the tool wrote; nothing else is ever replaced or deleted.
RUN_FILES = _files(CONFIG, SPLIT, PAIR, PAIR_PNG, *FORMER_NAMES.values(), HISTORY, METRICS, FIGURE3, TABLE1_CSV, TABLE1_MD)
# What a trained model brings with it: set aside together when the model is replaced.
MODEL_FILES = _files(PAIR, PAIR_PNG, *FORMER_NAMES.values(), METRICS, FIGURE3, TABLE1_CSV, TABLE1_MD)
LOCK = ".lock"
ASIDE = ".previous-run"
# files.atomic_write_bytes's temporary files: ".<owned name>.<random>.tmp"
_TEMP = re.compile(r"\.(?:" + RUN_FILES.pattern + r")\.[^/]+\.tmp")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """A run folder. Creating the object touches nothing; ``open_run`` checks the folder."""

    path: Path

    def file(self, name: str) -> Path:
        """``name``'s path in the run; for a file of the pair, its former name where only that exists
        (a run made before the pair's files were named so is read and written under the names it has)."""
        path = self.path / name
        former = FORMER_NAMES.get(name)
        if former is not None and not path.exists() and (self.path / former).exists():
            return self.path / former
        return path

    def has(self, name: str) -> bool:
        return self.file(name).is_file()

    @property
    def name(self) -> str:
        return self.path.name

    def config(self) -> dict:
        return files.read_json(self.file(CONFIG))

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

    def stage(self) -> str:
        """How far the run has come: new, trained, picked, refined or evaluated."""
        refined = any(re.fullmatch(rf"{_REFINED}\.pt", p.name) for p in self.path.iterdir()) if self.path.is_dir() else False
        if self.has(METRICS) and refined:
            return "evaluated"
        if refined:
            return "refined"
        for name, stage in ((PAIR, "picked"), (UNREFINED, "trained")):
            if self.has(name):
                return stage
        return "new"


def _config_is_ours(path: Path) -> bool:
    """True when ``path``/config.json was written by this tool (any version): the folder is a run."""
    try:
        return files.read_json(path / CONFIG).get("format") == RUN_FORMAT
    except RunError:
        return False


def check_target(path: str | Path, overwrite: bool = False) -> bool:
    """May a new run be written at ``path``? True when it replaces a run there (needs ``overwrite``).

    Writes nothing. A missing or empty folder is fine; a file, a folder holding anything
    that is not a run (the user's own files), and an existing run without ``overwrite``
    are refused with a ``RunError`` that says so, before any data is loaded.
    """
    path = Path(path)
    if not path.exists():
        return False
    if not path.is_dir():
        raise RunError(f"{path}: is a file, not a run folder")
    if (path / CONFIG).is_file() and _config_is_ours(path):
        if not overwrite:
            raise RunError(f"{path}: a run already exists here; pass --overwrite to replace it, or choose another folder")
        return True
    foreign = sorted(p.name for p in path.iterdir() if p.name not in (LOCK, ASIDE) and not _TEMP.fullmatch(p.name))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise RunError(
            f"{path}: folder is not empty and is not a run (it holds {foreign[0]!r}{more}); "
            "nothing was touched: choose a new or empty folder"
        )
    return False


def create_run(path: str | Path, config: dict) -> Run:
    """Write a new run's config.json (format, version, architecture and classes stamped in).

    The caller has checked the folder with ``check_target`` (and set an old run aside);
    an existing config.json is never overwritten here.
    """
    run = Run(Path(path))
    if run.has(CONFIG):
        raise RunError(f"{run.path}: a run already exists here; pass --overwrite to replace it, or choose another folder")
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{run.path}: the run folder could not be created ({exc.strerror or exc})") from exc
    # A random id, so that a checkpoint can tell this run from a copy of another; a copied run keeps it.
    stamp = {
        "format": RUN_FORMAT,
        "version": checkpoints.FORMAT_VERSION,
        "arch": ARCH,
        "classes": list(CLASSES),
        "run_id": secrets.token_hex(8),
    }
    files.write_json(run.file(CONFIG), {**stamp, **config})
    return run


def open_run(path: str | Path) -> Run:
    """Open an existing run folder, refusing one written by another version or model."""
    run = Run(Path(path))
    if not run.path.exists():
        raise RunError(f"{run.path}: run folder does not exist")
    if not run.path.is_dir():
        raise RunError(f"{run.path}: is a file, not a run folder")
    if not run.has(CONFIG):
        raise RunError(f"{run.path}: not a run folder (no {CONFIG})")
    cfg = run.config()
    if cfg.get("format") != RUN_FORMAT:
        raise RunError(f"{run.path}: not a run folder (its {CONFIG} was not written by eXBL Studio)")
    if cfg.get("version") != checkpoints.FORMAT_VERSION:
        raise RunError(
            f"{run.path}: run written by an incompatible version (format {cfg.get('format')!r} v{cfg.get('version')}); start a new run"
        )
    if cfg.get("arch") != ARCH or cfg.get("classes") != list(CLASSES):
        raise RunError(f"{run.path}: run is for another model ({cfg.get('arch')!r}, classes {cfg.get('classes')})")
    return run


# --------------------------------------------------------------------------- one writer at a time

_held: dict[str, tuple[int, int]] = {}  # run folder -> (thread holding its lock, nesting depth)
_held_guard = threading.Lock()


@contextlib.contextmanager
def locked(path: str | Path, create: bool = False) -> Iterator[None]:
    """Hold the run folder's lock: a second writer, in any process or thread, gets a ``RunError``.

    The lock is ``flock`` on ``.lock`` in the folder, so the kernel releases it when its
    process dies, however it dies: a lock left by a killed process is simply taken over.
    The file names the holder's process id for the refusal message. Taking the lock
    also cleans up after a killed writer (``recover``). Nested use in one thread is allowed.
    With ``create`` a missing folder is made first (it is then the tool's own).
    """
    path = Path(path)
    key = os.path.abspath(path)
    me = threading.get_ident()
    with _held_guard:
        holder = _held.get(key)
        if holder is not None and holder[0] == me:
            _held[key] = (me, holder[1] + 1)
    if holder is not None and holder[0] == me:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] = (me, _held[key][1] - 1)
        return
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"{path}: the run folder could not be created ({exc.strerror or exc})") from exc
    fd = _acquire(path)
    with _held_guard:
        _held[key] = (me, 1)
    try:
        recover(path)
        yield
    finally:
        with _held_guard:
            del _held[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # an empty lock file means "free"; a pid in an unlocked file means "its holder died"
        os.close(fd)


def holds_lock(path: str | Path) -> bool:
    """True when the calling thread holds ``path``'s lock."""
    held = _held.get(os.path.abspath(path))
    return held is not None and held[0] == threading.get_ident()


def _acquire(path: Path) -> int:
    lock_file = path / LOCK
    if not path.is_dir():
        raise RunError(f"{path}: {'is a file, not a run folder' if path.exists() else 'run folder does not exist'}")
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WriteError(f"{lock_file}: the run folder's lock could not be opened ({exc.strerror or exc})") from exc
    previous = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise RunError(f"{path}: run folder is in use by process {previous or '(unknown)'}; wait for it to finish, or stop it") from exc
    if previous and previous != str(os.getpid()):
        log.info("%s: process %s ended without releasing the run folder; taking it over", path, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


# --------------------------------------------------------------------------- replacing a run or its model


def recover(path: str | Path) -> None:
    """Clean up after a writer that was killed: its temporary files, and an unsettled replacement."""
    path = Path(path)
    for p in path.iterdir():
        if _TEMP.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)
    settle(path)


def set_aside(path: str | Path, names: re.Pattern) -> None:
    """Move the run's files whose names match ``names`` into ``.previous-run/`` until ``settle`` decides their fate.

    unrefined.pt moves first, so an interrupted move is restored by ``settle``, which
    keeps the aside files unless a new unrefined.pt exists. ``names`` must match it.
    """
    path = Path(path)
    assert names.fullmatch(UNREFINED) and holds_lock(path), "set_aside needs unrefined.pt among the names, under the run's lock"
    aside = path / ASIDE
    try:
        aside.mkdir(exist_ok=True)
        found = [p.name for p in path.iterdir() if names.fullmatch(p.name) and p.is_file()]
        for name in sorted(found, key=lambda n: n != UNREFINED):
            os.replace(path / name, aside / name)
    except OSError as exc:
        raise WriteError(f"{path}: could not set the previous run's files aside ({exc.strerror or exc})") from exc


def replaced_model(path: str | Path) -> bool:
    """Whether a finished unrefined.pt waits aside for a new model to finish (inside ``replacing``)."""
    return (Path(path) / ASIDE / UNREFINED).is_file()


def settle(path: str | Path) -> None:
    """Drop the set-aside files once a new unrefined.pt exists; otherwise put them back."""
    path = Path(path)
    aside = path / ASIDE
    if not aside.is_dir():
        return
    replaced = (path / UNREFINED).is_file()
    try:
        for kept in [p for p in aside.iterdir() if RUN_FILES.fullmatch(p.name) and p.is_file()]:
            if replaced:
                kept.unlink()
            else:
                os.replace(kept, path / kept.name)
        aside.rmdir()  # fails, and keeps the folder, if something that is not ours was put there
    except OSError as exc:
        log.warning("%s: could not settle %s (%s)", path, ASIDE, exc.strerror or exc)


@contextlib.contextmanager
def replacing(path: str | Path, names: re.Pattern = RUN_FILES) -> Iterator[None]:
    """Set the files matching ``names`` aside for a new model: they are dropped when it finishes, else restored.

    The new model's best epochs go to unrefined.partial.pt (``replaced_model``), and only a
    finished attempt moves it onto unrefined.pt and settles; the end of the block settles
    again, so a failure, cancel or interrupt at any epoch puts the old run back.
    """
    set_aside(path, names)
    try:
        yield
    finally:
        settle(path)


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
