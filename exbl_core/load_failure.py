"""Why ``torch.load(weights_only=True)`` refused a file, told in one line by reading the file ourselves.

Torch's refusal is a page of advice whose wording changes between releases, so the tool
never parses it. Once torch has refused a file, ``describe_load_failure`` looks at the
file with the standard library only (``zipfile`` and ``pickletools``, which disassemble
without unpickling, so nothing in the file runs): a damaged archive is "truncated or
corrupted"; a pickle that names a class or function outside what tensor files hold is
one that "could run code", and the line names it.
"""

from __future__ import annotations

import collections
import io
import pickletools
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

TRUNCATED = "the file is truncated or corrupted"
NOT_TENSORS = "not a PyTorch checkpoint, or one holding objects other than tensors; refused without running anything"
UNSAFE = "it holds a pickled {}, which could run code; it was refused and nothing in it ran"

ZIP_MAGIC = b"PK\x03\x04"
"""How every zip archive, and so every ``torch.save`` file since PyTorch 1.6, begins."""

# What torch.save writes for the files this tool reads (state dicts of tensors, in checkpoints,
# weights and shipped examples). Torch's weights-only loader allows each of these too, which
# tests/test_load_failure.py checks with torch's public ``get_unsafe_globals_in_checkpoint``.
TENSOR_GLOBALS = (
    collections.OrderedDict,
    torch.Size,
    torch._utils._rebuild_tensor_v2,
    torch._utils._rebuild_parameter,
    *(getattr(torch, name) for name in dir(torch) if name.endswith("Storage")),
)

_STRINGS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"})
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})


def global_name(obj: object) -> str:
    """The ``module.name`` under which a pickle refers to a class or function."""
    return f"{obj.__module__}.{obj.__qualname__}"


def safe_globals() -> set[str]:
    """The globals a refused file may name without being the reason: tensor files' own, and any marked safe with torch."""
    marked = {entry[1] if isinstance(entry, tuple) else global_name(entry) for entry in torch.serialization.get_safe_globals()}
    return {global_name(obj) for obj in TENSOR_GLOBALS} | marked


def pickled_globals(data: bytes) -> Iterator[str]:
    """The ``module.name`` of each global the pickles in ``data`` name, in order, without unpickling anything.

    ``data`` may hold several pickles one after another (the pre-zip ``torch.save`` format
    does). GLOBAL carries its name; STACK_GLOBAL (protocol 4 on) takes it from the two
    values pushed just before it, which the pickler writes as strings or fetches from its
    memo, so both are followed. Raises ``ValueError`` where the data stops being a pickle.
    """
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        recent: collections.deque[object] = collections.deque([None, None], maxlen=2)  # the last two pushes, if strings
        memo: dict[int, object] = {}
        for op, arg, _ in pickletools.genops(stream):
            if op.name == "GLOBAL":
                yield arg.replace(" ", ".")
            elif op.name == "STACK_GLOBAL":
                yield f"{recent[0]}.{recent[1]}"
            if op.name in _PUTS:
                memo[len(memo) if op.name == "MEMOIZE" else arg] = recent[-1]
            elif op.stack_after:
                recent.append(arg if op.name in _STRINGS else memo.get(arg) if op.name in _GETS else None)


def torch_pickle(data: bytes) -> bytes | None:
    """The pickle ``torch.load`` reads from a file: ``*/data.pkl`` in a zip archive, else the whole (pre-zip) file.

    ``None`` for an archive without one. Raises ``zipfile.BadZipFile`` (or ``zlib.error``,
    ``EOFError``) for an archive that is cut short or damaged, and ``NotImplementedError`` or
    ``RuntimeError`` for one packed in a way ``torch.save`` never packs (another compression,
    encryption).
    """
    if not data.startswith(ZIP_MAGIC):
        return data
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        return archive.read(pickles[0]) if pickles else None


def describe_load_failure(source: str | Path | bytes) -> str:
    """One line on why ``torch.load(weights_only=True)`` refused ``source`` (a file, or its bytes), independent of torch's wording."""
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:  # unreadable, or gone since torch tried
        return f"it cannot be read ({exc.strerror or type(exc).__name__})"
    try:
        pickle = torch_pickle(data)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError):  # cut, garbled, or packed oddly
        return TRUNCATED
    if pickle is None:
        return NOT_TENSORS
    allowed = safe_globals()
    try:
        unsafe = next((name for name in pickled_globals(pickle) if name not in allowed), None)
    except ValueError:
        return TRUNCATED
    if unsafe is not None:
        return UNSAFE.format(unsafe)
    return NOT_TENSORS if data.startswith(ZIP_MAGIC) else TRUNCATED
