"""Command-line interface: ``python -m exbl_core {demo,train,oracle,pick,refine,evaluate,figure,explain,study,weights,assets}``.

Each sub-command lives with its kind (``commands``: the workflow's steps; ``tools``: the
rest), ``parser`` declares the options and ``progress`` prints; ``main`` turns every
refusal into one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator

from tqdm import tqdm

from exbl_core import allocator, errors
from exbl_core.cli.parser import build_parser
from exbl_core.data import DataError
from exbl_core.training import Interrupted, TrainingError


def _interrupt(signum: int, _frame: object) -> None:
    """Turn SIGTERM into a KeyboardInterrupt, which training records and answers like SIGINT."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM takes SIGINT's path: the step records the interruption and says what it kept.

    Only the main thread may install a handler; elsewhere (a test calling ``main`` from a
    thread) SIGTERM keeps its default.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _printable_anywhere() -> None:
    """Escape what the console cannot encode instead of failing on it.

    With an ASCII-only console, printing a non-ASCII run path raised UnicodeEncodeError
    after the model had trained; the path is now printed with backslash escapes.
    """
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _printable_anywhere()
    allocator.keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_interrupts():
            return args.func(args)
    # Through tqdm: a signal or a fault can come while an epoch's bar is still drawn, and tqdm
    # clears it first, so that the line does not continue the bar's.
    except (DataError, errors.RunError, errors.CheckpointError, TrainingError, ValueError, OSError) as exc:
        tqdm.write(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # A training step's Interrupted says what it kept; elsewhere nothing was being written.
        said = str(exc) if isinstance(exc, Interrupted) else "the files written before it are kept"
        tqdm.write(f"interrupted: {said}", file=sys.stderr)
        return 130
