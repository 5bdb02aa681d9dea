"""config.json and split.json values of the wrong JSON type are refused before any training.

The settings' dataclasses check ranges, and Python lets ``True >= 1`` and ``16 <= 96.5``
pass, so ``"epochs": true`` would train one epoch and ``"size": 96.5`` would crash deep in
resizing. Each is one line naming the file and the setting, exit 2, and nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exbl_core import cli, config, errors, files, run_data, runs
from exbl_core.config import RefineConfig, TrainConfig


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def refused(capsys, *argv) -> str:
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    return err.strip()


def _set(path: Path, section: str, key: str, value) -> None:
    config = files.read_json(path / runs.CONFIG)
    config[section][key] = value
    (path / runs.CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize(
    "section, key, value, said",
    [
        ("train", "epochs", True, "epochs is true, which is not of type int"),
        ("refine", "epochs", True, "epochs is true, which is not of type int"),
        ("refine", "epochs", 2.5, "epochs is 2.5, which is not of type int"),
        ("refine", "lr", "0.001", 'lr is "0.001", which is not of type float'),
        ("refine", "flip", 1, "flip is 1, which is not of type bool"),
        ("refine", "lambda_expl", False, "lambda_expl is false, which is not of type float or null"),
        ("data", "size", 96.5, "size is 96.5, which is not of type int"),
        ("data", "viral_strength", True, "viral_strength is true, which is not of type float"),
    ],
)
def test_a_setting_of_the_wrong_type_is_refused_before_refining(run_copy, capsys, section, key, value, said):
    _set(run_copy, section, key, value)
    before = snapshot(run_copy)
    line = refused(capsys, "refine", "--run", run_copy)
    assert line.startswith(f"error: {run_copy / runs.CONFIG}: its {section!r} settings are not valid") and said in line
    assert snapshot(run_copy) == before, "nothing is written, not even a history line"


def test_an_int_is_a_fine_float_and_null_a_fine_optional(run_copy):
    _set(run_copy, "refine", "lr", 1)
    _set(run_copy, "refine", "lambda_expl", None)
    assert run_data.train_config(runs.open_run(run_copy), "refine") == RefineConfig(**files.read_json(run_copy / runs.CONFIG)["refine"])


@pytest.fixture
def folder_run(make_database, tmp_path: Path) -> Path:
    """A real-data run with config.json and split.json written, not trained."""
    spec = config.FolderSpec(str(make_database(per_class=3)), size=32, train=1, val=1, test=1)
    run = run_data.new_run(tmp_path / "real", spec, TrainConfig(epochs=1), RefineConfig(epochs=1), start="random")
    return run.path


@pytest.mark.parametrize("label", [4, -1, True, "0"])
def test_a_label_out_of_range_in_split_json_is_refused_naming_the_file_before_training(folder_run, capsys, label):
    split = files.read_json(folder_run / runs.SPLIT)
    split["val"][0][0] = label
    (folder_run / runs.SPLIT).write_text(json.dumps(split))
    before = snapshot(folder_run)
    line = refused(capsys, "train", "--run", folder_run)
    assert line.startswith(f"error: {folder_run / runs.SPLIT}: val entry 0 is [{json.dumps(label)}, ")
    assert "with a label 0 to 3" in line
    assert snapshot(folder_run) == before and not (folder_run / runs.UNREFINED).exists()
    with pytest.raises(errors.RunError, match="val entry 0"):
        run_data.load_split(runs.open_run(folder_run), "val")  # the app's way in is checked too
