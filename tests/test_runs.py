"""Run folders on disk (DESIGN.md §9): atomic files, checkpoints with metadata, stages."""

from __future__ import annotations

import os

import pytest
import torch

from exbl_core import runs
from exbl_core.model import ARCH, build_model


def test_checkpoint_round_trip_restores_weights_and_returns_metadata(tmp_path):
    torch.manual_seed(1)
    src, dst = build_model(num_classes=4), build_model(num_classes=4)
    runs.save_checkpoint(tmp_path / "m.pt", src.state_dict(), {"epoch": 3, "phase": "unrefined"})
    meta = runs.load_checkpoint(tmp_path / "m.pt", dst)
    assert meta["epoch"] == 3 and meta["phase"] == "unrefined" and meta["arch"] == ARCH
    assert "state_dict" not in meta
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))


def test_missing_checkpoint_is_reported_naming_it(tmp_path):
    with pytest.raises(runs.CheckpointError, match=r"nope\.pt: checkpoint not found"):
        runs.load_checkpoint(tmp_path / "nope.pt", build_model())


def test_atomic_write_goes_through_a_temporary_file_and_os_replace(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst), open(src, "rb").read()))
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    runs.atomic_write_text(tmp_path / "a.txt", "hello")
    assert len(seen) == 1
    tmp_name, target, content = seen[0]
    assert target == "a.txt" and tmp_name.startswith(".a.txt.") and tmp_name.endswith(".tmp")
    assert content == b"hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_json_round_trip(tmp_path):
    runs.write_json(tmp_path / "x.json", {"a": [1, 2], "b": "é"})
    assert runs.read_json(tmp_path / "x.json") == {"a": [1, 2], "b": "é"}


def test_reading_missing_json_is_a_run_error(tmp_path):
    with pytest.raises(runs.RunError, match=r"x\.json: file not found"):
        runs.read_json(tmp_path / "x.json")


def test_create_run_stamps_format_version_architecture_and_classes(tmp_path):
    run = runs.create_run(tmp_path / "r", {"data": {"source": "synthetic"}})
    cfg = run.config()
    assert cfg["format"] == runs.RUN_FORMAT and cfg["version"] == runs.FORMAT_VERSION and cfg["arch"] == ARCH
    assert cfg["data"] == {"source": "synthetic"}
    assert runs.open_run(run.path).path == run.path


def test_create_run_refuses_to_overwrite_unless_asked(tmp_path):
    runs.create_run(tmp_path / "r", {"x": 1})
    with pytest.raises(runs.RunError, match="already exists"):
        runs.create_run(tmp_path / "r", {"x": 2})
    assert runs.create_run(tmp_path / "r", {"x": 2}, overwrite=True).config()["x"] == 2


def test_overwriting_a_run_removes_its_stale_results(tmp_path):
    run = runs.create_run(tmp_path / "r", {})
    runs.atomic_write_text(run.file(runs.METRICS), "{}")
    runs.atomic_write_text(run.file(runs.REFINED), "x")
    runs.create_run(tmp_path / "r", {}, overwrite=True)
    assert not run.has(runs.METRICS) and not run.has(runs.REFINED)


def test_open_run_refuses_missing_folder_and_folder_without_config(tmp_path):
    with pytest.raises(runs.RunError, match="does not exist"):
        runs.open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(runs.RunError, match="not a run folder"):
        runs.open_run(tmp_path / "empty")


def test_stage_follows_the_files_present(tmp_path):
    run = runs.create_run(tmp_path / "r", {})
    assert run.stage() == "new"
    for name, stage in ((runs.UNREFINED, "trained"), (runs.EXEMPLARS, "picked"), (runs.REFINED, "refined"), (runs.METRICS, "evaluated")):
        runs.atomic_write_text(run.file(name), "x")
        assert run.stage() == stage


def test_history_appends_one_event_per_line(tmp_path):
    run = runs.create_run(tmp_path / "r", {})
    run.append_history({"type": "epoch_end", "epoch": 1})
    run.append_history({"type": "done", "epoch": 1})
    assert [e["type"] for e in run.history()] == ["epoch_end", "done"]


def test_list_runs_lists_only_openable_runs(tmp_path):
    runs.create_run(tmp_path / "a", {})
    (tmp_path / "junk").mkdir()
    runs.write_json(tmp_path / "old" / runs.CONFIG, {"format": runs.RUN_FORMAT, "version": 0})
    assert [r.name for r in runs.list_runs(tmp_path)] == ["a"]
    assert runs.list_runs(tmp_path / "missing") == []
