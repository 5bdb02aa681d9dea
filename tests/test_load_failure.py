"""Why a checkpoint was refused, found by reading the file, never by parsing torch's message.

``torch.load(weights_only=True)`` refuses damaged files and pickles that name code; the
line the user sees must say which, and must not change when torch rewords its error.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from exbl_core import checkpoints, errors
from exbl_core.load_failure import (
    NOT_TENSORS,
    TENSOR_GLOBALS,
    TRUNCATED,
    UNSAFE,
    describe_load_failure,
    global_name,
    pickled_globals,
    safe_globals,
    torch_pickle,
)
from exbl_core.model import build_model
from exbl_core.weights import WeightsError, load_backbone


class Gadget:
    """A small class of the test's own: pickling one names ``test_load_failure.Gadget`` (or similar)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("ran")  # unpickling this object would leave a trace


class Other:
    """A second class from the same module, which a protocol-4 pickle names through its memo."""


class Third:
    """A third one, to check the order of what is named."""


@pytest.fixture(scope="module")
def model4() -> torch.nn.Module:
    return build_model(num_classes=4)


@pytest.fixture
def good_checkpoint(tmp_path: Path, model4: torch.nn.Module) -> Path:
    path = tmp_path / "good.pt"
    checkpoints.save_checkpoint(path, model4.state_dict(), {})
    return path


@pytest.fixture
def gadget_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "gadget.pt"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "version": checkpoints.FORMAT_VERSION, "extra": Gadget(tmp_path / "marker")}, path)
    return path


def test_a_checkpoint_holding_an_object_is_refused_naming_its_class(gadget_checkpoint, model4):
    line = UNSAFE.format(global_name(Gadget))
    assert "could run code; it was refused and nothing in it ran" in line
    with pytest.raises(errors.CheckpointError) as caught:
        checkpoints.load_checkpoint(gadget_checkpoint, model4)
    assert str(caught.value) == f"{gadget_checkpoint}: cannot be loaded safely as a checkpoint ({line})"
    assert not (gadget_checkpoint.parent / "marker").exists()
    # Torch's public check agrees that what we name is outside its weights-only allow list.
    assert global_name(Gadget) in torch.serialization.get_unsafe_globals_in_checkpoint(gadget_checkpoint)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_a_truncated_checkpoint_is_truncated_or_corrupted(good_checkpoint, model4, keep):
    data = good_checkpoint.read_bytes()
    good_checkpoint.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(errors.CheckpointError, match=rf"good\.pt: cannot be loaded safely as a checkpoint \({TRUNCATED}\)$"):
        checkpoints.load_checkpoint(good_checkpoint, model4)


def test_a_damaged_pickle_inside_an_intact_archive_is_corrupted(tmp_path, good_checkpoint):
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(good_checkpoint) as source, zipfile.ZipFile(damaged, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, b"\xff" + data[1:] if name.endswith("/data.pkl") else data)
    assert describe_load_failure(damaged) == TRUNCATED


def test_an_archive_without_a_pickle_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "foreign.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    assert describe_load_failure(path) == NOT_TENSORS


def test_a_raw_protocol_5_pickle_names_its_global(tmp_path):
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"state_dict": Gadget(tmp_path / "marker")}, protocol=5))
    assert describe_load_failure(path) == UNSAFE.format(global_name(Gadget))


def test_weights_holding_a_module_name_it(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(WeightsError) as caught:
        load_backbone(path)
    assert str(caught.value) == f"{path}: cannot be loaded safely as weights ({UNSAFE.format('torch.nn.modules.linear.Linear')})"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickled_globals_are_listed_in_order_through_stack_globals_and_the_memo(protocol):
    data = pickle.dumps([Other(), Third(), Other(), collections.OrderedDict()], protocol=protocol)
    assert list(dict.fromkeys(pickled_globals(data))) == [global_name(Other), global_name(Third), "collections.OrderedDict"]


def test_a_pickle_cut_short_raises_value_error():
    data = pickle.dumps([Other(), Third()], protocol=4)
    with pytest.raises(ValueError):
        list(pickled_globals(data[:-3]))


def test_what_tensor_files_hold_is_allowed_here_and_by_torch(tmp_path, good_checkpoint):
    assert set(pickled_globals(torch_pickle(good_checkpoint.read_bytes()))) <= safe_globals()
    listed = tmp_path / "globals.pt"
    torch.save(list(TENSOR_GLOBALS), listed)  # each class or function pickled by name
    assert {global_name(obj) for obj in TENSOR_GLOBALS} <= set(pickled_globals(torch_pickle(listed.read_bytes())))
    assert torch.serialization.get_unsafe_globals_in_checkpoint(listed) == []


def test_globals_marked_safe_with_torch_are_not_the_reason(tmp_path):
    path = tmp_path / "two.pt"
    torch.save({"a": Other(), "b": Third()}, path)
    assert describe_load_failure(path) == UNSAFE.format(global_name(Other))
    with torch.serialization.safe_globals([Other]):
        assert describe_load_failure(path) == UNSAFE.format(global_name(Third))


@pytest.mark.parametrize("damage", ["gadget", "truncated", "foreign"])
def test_the_line_does_not_depend_on_torchs_message(tmp_path, gadget_checkpoint, good_checkpoint, model4, monkeypatch, damage):
    if damage == "gadget":
        path = gadget_checkpoint
    elif damage == "truncated":
        path = good_checkpoint
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path = tmp_path / "foreign.pt"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes/readme.txt", "hello")
    with pytest.raises(errors.CheckpointError) as by_torch:
        checkpoints.load_checkpoint(path, model4)

    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported global: GLOBAL some.Other message, or a zip archive with no central directory")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(errors.CheckpointError) as reworded:
        checkpoints.load_checkpoint(path, model4)
    assert str(reworded.value) == str(by_torch.value)
    assert "some.Other" not in str(reworded.value)


def test_a_file_gone_since_torch_tried_is_described_not_raised(tmp_path):
    assert describe_load_failure(tmp_path / "gone.pt") == "it cannot be read (No such file or directory)"
