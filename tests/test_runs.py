"""Run folders on disk (docs/design.md §9): atomic files, checkpoints with metadata, stages."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from exbl_core import checkpoints, errors, files, runs
from exbl_core.model import ARCH, build_model


def test_checkpoint_round_trip_restores_weights_and_returns_metadata(tmp_path):
    torch.manual_seed(1)
    src, dst = build_model(num_classes=4), build_model(num_classes=4)
    checkpoints.save_checkpoint(tmp_path / "m.pt", src.state_dict(), {"epoch": 3, "phase": "unrefined"})
    meta = checkpoints.load_checkpoint(tmp_path / "m.pt", dst)
    assert meta["epoch"] == 3 and meta["phase"] == "unrefined" and meta["arch"] == ARCH
    assert "state_dict" not in meta
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))


def test_missing_checkpoint_is_reported_naming_it(tmp_path):
    with pytest.raises(errors.CheckpointError, match=r"nope\.pt: checkpoint not found"):
        checkpoints.load_checkpoint(tmp_path / "nope.pt", build_model())


def test_atomic_write_goes_through_a_temporary_file_and_os_replace(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst), open(src, "rb").read()))
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    files.atomic_write_text(tmp_path / "a.txt", "hello")
    assert len(seen) == 1
    tmp_name, target, content = seen[0]
    assert target == "a.txt" and tmp_name.startswith(".a.txt.") and tmp_name.endswith(".tmp")
    assert content == b"hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_json_round_trip(tmp_path):
    files.write_json(tmp_path / "x.json", {"a": [1, 2], "b": "é"})
    assert files.read_json(tmp_path / "x.json") == {"a": [1, 2], "b": "é"}


def test_reading_missing_json_is_a_run_error(tmp_path):
    with pytest.raises(errors.RunError, match=r"x\.json: file not found"):
        files.read_json(tmp_path / "x.json")


def test_create_run_stamps_format_version_architecture_and_classes(tmp_path):
    run = runs.create_run(tmp_path / "r", {"data": {"source": "synthetic"}})
    cfg = run.config()
    assert cfg["format"] == runs.RUN_FORMAT and cfg["version"] == checkpoints.FORMAT_VERSION and cfg["arch"] == ARCH
    assert cfg["data"] == {"source": "synthetic"}
    assert runs.open_run(run.path).path == run.path


def test_create_run_never_writes_over_an_existing_run(tmp_path):
    runs.create_run(tmp_path / "r", {"x": 1})
    with pytest.raises(errors.RunError, match="already exists.*--overwrite"):
        runs.create_run(tmp_path / "r", {"x": 2})
    assert runs.open_run(tmp_path / "r").config()["x"] == 1


def test_open_run_refuses_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(errors.RunError, match="does not exist"):
        runs.open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.RunError, match="not a run folder"):
        runs.open_run(tmp_path / "empty")


def test_stage_follows_the_files_present(tmp_path):
    run = runs.create_run(tmp_path / "r", {})
    assert run.stage() == "new"
    for name, stage in (
        (runs.UNREFINED, "trained"),
        (runs.PAIR, "picked"),
        (runs.refined_file("exbl"), "refined"),
        (runs.METRICS, "evaluated"),
    ):
        files.atomic_write_text(run.file(name), "x")
        assert run.stage() == stage


def test_history_appends_one_event_per_line(tmp_path):
    run = runs.create_run(tmp_path / "r", {})
    run.append_history({"type": "epoch_end", "epoch": 1})
    run.append_history({"type": "done", "epoch": 1})
    assert [e["type"] for e in run.history()] == ["epoch_end", "done"]


def test_list_runs_lists_only_openable_runs(tmp_path):
    runs.create_run(tmp_path / "a", {})
    (tmp_path / "junk").mkdir()
    files.write_json(tmp_path / "old" / runs.CONFIG, {"format": runs.RUN_FORMAT, "version": 0})
    assert [r.name for r in runs.list_runs(tmp_path)] == ["a"]
    assert runs.list_runs(tmp_path / "missing") == []


# --------------------------------------------------------------------------- which folders are runs


def test_check_target_accepts_a_missing_or_empty_folder(tmp_path):
    assert runs.check_target(tmp_path / "new") is False
    (tmp_path / "empty").mkdir()
    assert runs.check_target(tmp_path / "empty") is False


@pytest.mark.parametrize("where", ["folder", "root"])
def test_check_target_refuses_a_folder_of_user_files_and_touches_nothing(tmp_path, where):
    folder = tmp_path if where == "folder" else Path("/")
    if where == "folder":
        (folder / "config.json").write_text('{"mine": true}')
        (folder / "unrefined.pt").write_bytes(b"my own weights")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(errors.RunError, match="not empty and is not a run.*nothing was touched"):
        runs.check_target(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_check_target_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(errors.RunError, match="is a file, not a run folder"):
        runs.check_target(tmp_path / "f")


def test_check_target_needs_overwrite_to_replace_a_run(tmp_path):
    runs.create_run(tmp_path / "r", {})
    with pytest.raises(errors.RunError, match="a run already exists here; pass --overwrite"):
        runs.check_target(tmp_path / "r")
    assert runs.check_target(tmp_path / "r", overwrite=True) is True


@pytest.mark.parametrize("text", ["[]", "3", '"run"'])
def test_config_json_that_is_not_an_object_is_refused_naming_it(tmp_path, text):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / runs.CONFIG).write_text(text)
    with pytest.raises(errors.RunError, match=r"config\.json: expected a JSON object"):
        runs.open_run(tmp_path / "r")


def test_open_run_on_a_file_says_so(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(errors.RunError, match="is a file, not a run folder"):
        runs.open_run(tmp_path / "f")


def test_settings_are_written_as_strict_json_only(tmp_path):
    with pytest.raises(errors.RunError, match=r"x\.json: holds a value that is not a finite number"):
        files.write_json(tmp_path / "x.json", {"margin": float("inf")})
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------- replacing a run: set aside, then settle


def _old_run(path: Path) -> dict[str, bytes]:
    run = runs.create_run(path, {"x": "old"})
    for name in (runs.UNREFINED, runs.refined_file("exbl"), runs.METRICS, runs.HISTORY):
        files.atomic_write_text(run.file(name), f"old {name}")
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != runs.LOCK}


def test_a_replaced_run_comes_back_when_the_new_one_gets_no_checkpoint(tmp_path):
    old = _old_run(tmp_path / "r")
    with runs.locked(tmp_path / "r"), pytest.raises(RuntimeError), runs.replacing(tmp_path / "r"):
        assert not (tmp_path / "r" / runs.UNREFINED).exists()
        runs.create_run(tmp_path / "r", {"x": "new"})
        raise RuntimeError("training failed before its first checkpoint")
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file() and p.name != runs.LOCK} == old
    assert not (tmp_path / "r" / runs.ASIDE).exists()


def test_a_replaced_run_is_dropped_at_the_new_first_checkpoint(tmp_path):
    _old_run(tmp_path / "r")
    (tmp_path / "r" / "notes.txt").write_text("the user's own")
    with runs.locked(tmp_path / "r"), runs.replacing(tmp_path / "r"):
        runs.create_run(tmp_path / "r", {"x": "new"})
        files.atomic_write_text(tmp_path / "r" / runs.UNREFINED, "new model")
        runs.settle(tmp_path / "r")
        assert not (tmp_path / "r" / runs.ASIDE).exists()
    assert runs.open_run(tmp_path / "r").config()["x"] == "new"
    assert (tmp_path / "r" / runs.UNREFINED).read_text() == "new model"
    assert not (tmp_path / "r" / runs.refined_file("exbl")).exists() and not (tmp_path / "r" / runs.METRICS).exists()
    assert (tmp_path / "r" / "notes.txt").read_text() == "the user's own"


def test_a_replacement_cut_short_by_a_kill_is_settled_at_the_next_lock(tmp_path):
    old = _old_run(tmp_path / "r")
    aside = tmp_path / "r" / runs.ASIDE
    aside.mkdir()  # as if killed right after moving the old model aside
    os.replace(tmp_path / "r" / runs.UNREFINED, aside / runs.UNREFINED)
    with runs.locked(tmp_path / "r"):
        pass
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file() and p.name != runs.LOCK} == old
    assert not aside.exists()


def test_leftover_temporary_files_go_at_the_next_lock_and_the_users_stay(tmp_path):
    run = runs.create_run(tmp_path / "r", {})
    leftover = run.file(".unrefined.pt.k2j3h4.tmp")
    leftover.write_bytes(b"\0" * 1000)
    mine = run.file(".draft.txt.tmp")
    mine.write_text("not the tool's")
    with runs.locked(run.path):
        pass
    assert not leftover.exists() and mine.exists()


# --------------------------------------------------------------------------- one writer at a time


def _hold(path: str, ready) -> None:
    with runs.locked(path):
        ready.set()
        time.sleep(60)


def _holder(path: Path) -> multiprocessing.Process:
    """Another process holding the run's lock; forked, so it starts in milliseconds, not after importing torch."""
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(path), ready), daemon=True)
    proc.start()
    assert ready.wait(30), "the holder never took the lock"
    return proc


def test_a_second_writer_is_told_which_process_holds_the_run(tmp_path):
    run = runs.create_run(tmp_path / "r", {})
    proc = _holder(run.path)
    try:
        with pytest.raises(errors.RunError, match=rf"r: run folder is in use by process {proc.pid}"), runs.locked(run.path):
            pass
    finally:
        proc.kill()
        proc.join(30)


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    run = runs.create_run(tmp_path / "r", {})
    proc = _holder(run.path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert run.file(runs.LOCK).read_text().strip() == str(proc.pid)  # stale: names a dead process
    with runs.locked(run.path):
        assert run.file(runs.LOCK).read_text().strip() == str(os.getpid())


def test_another_thread_of_the_same_process_is_refused(tmp_path):
    run = runs.create_run(tmp_path / "r", {})
    refusals = []

    def second() -> None:
        try:
            with runs.locked(run.path):
                pass
        except errors.RunError as exc:
            refusals.append(str(exc))

    with runs.locked(run.path):
        with runs.locked(run.path):  # the same thread may nest
            thread = threading.Thread(target=second)
            thread.start()
            thread.join()
    assert refusals and f"in use by process {os.getpid()}" in refusals[0]
    with runs.locked(run.path):  # and it is free again afterwards
        pass


def test_locking_a_missing_folder_creates_nothing(tmp_path):
    with pytest.raises(errors.RunError, match="run folder does not exist"), runs.locked(tmp_path / "missing"):
        pass
    assert not (tmp_path / "missing").exists()


def test_a_run_claims_the_refined_checkpoints_of_its_methods_only():
    """A user's own refined-mine.pt beside a run's files is not the tool's, so it is never set aside or replaced."""
    from exbl_core.methods import METHODS

    for name in METHODS:
        assert runs.RUN_FILES.fullmatch(runs.refined_file(name)), name
        assert runs.RUN_FILES.fullmatch(runs.partial_file(runs.refined_file(name))), name
    for foreign in ("refined-mine.pt", "refined-exbl-v2.pt", "refined-.pt", "mine.pt"):
        assert not runs.RUN_FILES.fullmatch(foreign), foreign
        assert not runs.MODEL_FILES.fullmatch(foreign), foreign


def test_a_run_made_before_the_pair_had_its_name_keeps_its_files_under_their_former_names(run_copy: Path) -> None:
    from exbl_core import cli

    for name, former in runs.FORMER_NAMES.items():
        (run_copy / name).rename(run_copy / former)
    run = runs.open_run(run_copy)
    assert run.has(runs.PAIR) and run.stage() == "refined"
    assert cli.main(["pick", "--run", str(run_copy), "--good", "2", "--bad", "3"]) == 0
    assert cli.main(["refine", "--run", str(run_copy), "--epochs", "1"]) == 0  # reads the pair it just saved
    assert not (run_copy / runs.PAIR).exists() and not (run_copy / runs.PAIR_PNG).exists()
    pair = files.read_json(run_copy / runs.FORMER_NAMES[runs.PAIR])
    assert (pair["good"]["index"], pair["bad"]["index"]) == (2, 3)
