"""Read the weights out of an old-format (pre-1.6, non-zip) whole-model torch checkpoint, safely.

Such a file is a run of pickles: a magic number, a protocol number, system info, the model
object (its storages referenced by persistent ids), the list of storage keys, and then each
storage's raw bytes. ``torch.load(weights_only=True)`` refuses it because the model object names
its classes, and ``weights_only=False`` would run whatever the file asks. This reader does
neither: its unpickler resolves only what rebuilding tensors needs (``_rebuild_tensor_v2``,
``_rebuild_parameter``, float and long storages, ``OrderedDict``, ``set``) plus the module classes named
by the caller, which become a stand-in that only keeps its ``__dict__``. Any other global, such as
``os.system``, is refused before anything is called. Tensors are built from the raw bytes at the
end, with their size checked against what the pickle declared.
"""

from __future__ import annotations

import collections
import pickle
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import torch

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {"FloatStorage": torch.float32, "LongStorage": torch.int64}
REBUILDERS = ("_rebuild_tensor_v2", "_rebuild_parameter")
MAX_STORAGE_BYTES = 1 << 31  # one storage larger than 2 GB is not a lung segmenter


class CheckpointError(ValueError):
    """The file is not a readable old-format checkpoint, or it asks for more than tensors."""


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _StorageType:
    """Stands for ``torch.FloatStorage`` and the like: only its dtype is ever used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Module:
    """Stands for a pickled ``nn.Module``: keeps the state the pickle hands it and nothing else."""

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise CheckpointError("a module's pickled state is not a dict")
        self.state = state


def _rebuild_tensor(storage: _StorageRef, offset: int, size: tuple, stride: tuple, *_: object) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise CheckpointError("a tensor refers to something that is not a storage")
    return _TensorRef(storage, int(offset), tuple(map(int, size)), tuple(map(int, stride)))


def _rebuild_parameter(data: _TensorRef, *_: object) -> _TensorRef:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, module_classes: frozenset[str]) -> None:
        super().__init__(file)
        self.module_classes = module_classes
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> object:
        full = f"{module}.{name}"
        if full == "collections.OrderedDict":
            return collections.OrderedDict
        if full in ("builtins.set", "__builtin__.set"):  # a newer module's _non_persistent_buffers_set: names only
            return set
        if module == "torch._utils" and name in REBUILDERS:
            return _rebuild_tensor if name == "_rebuild_tensor_v2" else _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if full in self.module_classes:
            return _Module
        raise CheckpointError(f"refuses the global {full}: only tensors and the expected module classes may be rebuilt")

    def persistent_load(self, pid: object) -> object:
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        if pid[0] == "module" and len(pid) == 4 and pid[1] is _Module:
            return _Module
        if pid[0] == "storage" and len(pid) == 6:
            _, kind, key, _location, numel, view = pid
            if not isinstance(kind, _StorageType) or not isinstance(key, str) or not isinstance(numel, int) or view is not None:
                raise CheckpointError(f"unexpected storage reference {pid!r}")
            if key in self.storages and self.storages[key] != _StorageRef(key, kind.dtype, numel):
                raise CheckpointError(f"storage {key} is declared twice with different types or sizes")
            return self.storages.setdefault(key, _StorageRef(key, kind.dtype, numel))
        raise CheckpointError(f"unexpected persistent id of kind {pid[0]!r}")


def _module_state(module: _Module, prefix: str, out: dict[str, _TensorRef]) -> None:
    """Walk ``_parameters``, ``_buffers`` and ``_modules`` as ``nn.Module.state_dict`` would."""
    state = module.state
    transient = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None and not (group == "_buffers" and name in transient):
                if not isinstance(value, _TensorRef):
                    raise CheckpointError(f"{prefix}{name} is not a tensor")
                out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            if not isinstance(child, _Module):
                raise CheckpointError(f"{prefix}{name} is not a module")
            _module_state(child, f"{prefix}{name}.", out)


def _read_storage(file: BinaryIO, ref: _StorageRef) -> torch.Tensor:
    head = file.read(8)
    if len(head) != 8:
        raise CheckpointError(f"file ends before storage {ref.key}")
    (numel,) = struct.unpack("<q", head)
    itemsize = torch.empty((), dtype=ref.dtype).element_size()
    if numel != ref.numel or not 0 <= numel * itemsize <= MAX_STORAGE_BYTES:
        raise CheckpointError(f"storage {ref.key} holds {numel} elements, but the pickle declared {ref.numel}")
    data = file.read(numel * itemsize)
    if len(data) != numel * itemsize:
        raise CheckpointError(f"file ends inside storage {ref.key}")
    return torch.frombuffer(bytearray(data), dtype=ref.dtype) if numel else torch.empty(0, dtype=ref.dtype)


def _materialise(ref: _TensorRef, storage: torch.Tensor) -> torch.Tensor:
    needed = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride, strict=True)) + 1 if all(ref.size) else 0
    if ref.offset < 0 or needed > storage.numel() or any(st < 0 for st in ref.stride):
        raise CheckpointError(f"a tensor of size {ref.size} reaches outside its storage {ref.storage.key}")
    return storage.as_strided(ref.size, ref.stride, ref.offset).clone()


def read_state_dict(file: BinaryIO, module_classes: Iterable[str]) -> dict[str, torch.Tensor]:
    """The state dict of the whole-model checkpoint in ``file``, read sequentially (a stream will do).

    ``module_classes`` lists the dotted names (``module.Class``) that may appear as modules; each
    becomes a stand-in holding its state. Raises :class:`CheckpointError` for anything else.
    """
    allowed = frozenset(module_classes)

    def load() -> object:
        try:
            return _RestrictedUnpickler(file, allowed).load()
        except CheckpointError:
            raise
        except Exception as exc:  # a truncated or garbled pickle raises many types
            raise CheckpointError(f"not a readable old-format checkpoint ({type(exc).__name__}: {exc})") from exc

    if load() != LEGACY_MAGIC:
        raise CheckpointError("not an old-format torch checkpoint (wrong magic number)")
    load(), load()  # protocol version and system info: plain numbers and a dict
    unpickler = _RestrictedUnpickler(file, allowed)
    try:
        model = unpickler.load()
        keys = _RestrictedUnpickler(file, frozenset()).load()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"not a readable old-format checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(model, _Module):
        raise CheckpointError("the checkpoint does not hold a whole model")
    if not isinstance(keys, list) or sorted(keys) != sorted(unpickler.storages):
        raise CheckpointError("the checkpoint's storage list does not match the storages its model uses")
    refs: dict[str, _TensorRef] = {}
    _module_state(model, "", refs)
    storages = {key: _read_storage(file, unpickler.storages[key]) for key in keys}
    return {name: _materialise(ref, storages[ref.storage.key]) for name, ref in refs.items()}
