"""The command-line interface: the quick demo writes every file, and bad requests get exit code 2.

The quick demo runs once per session (the ``demo_run`` fixture in conftest.py); the
step commands then work on private copies of its run folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exbl_core import cli, pipeline, runs

REPO = Path(__file__).resolve().parents[1]
DEMO_FILES = (
    "config.json",
    "split.json",
    "unrefined.pt",
    "exemplars.json",
    "exemplars.png",
    "refined.pt",
    "history.jsonl",
    "metrics.json",
    "figure3.png",
    "table1.csv",
)

pytestmark = pytest.mark.slow  # the session's quick demo takes about half a minute


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_quick_demo_succeeds(demo_run):
    assert demo_run.exit_code == 0, demo_run.stderr[-3000:]


@pytest.mark.parametrize("name", DEMO_FILES)
def test_quick_demo_writes(demo_run, name):
    path = demo_run.path / name
    assert path.is_file() and path.stat().st_size > 0


def test_quick_demo_metrics_json_has_the_documented_shape(demo_run):
    metrics = json.loads((demo_run.path / "metrics.json").read_text())
    for model in ("unrefined", "refined"):
        assert set(metrics[model]) >= {"val", "test", "shortcut_test"}
        for split in ("val", "test", "shortcut_test"):
            leaf = metrics[model][split]
            assert 0 <= leaf["accuracy"] <= 1 and 0 <= leaf["activation_precision"] <= 1
    assert isinstance(metrics["exemplars"]["good"], int) and isinstance(metrics["exemplars"]["bad"], int)
    assert metrics["exemplars"]["good"] != metrics["exemplars"]["bad"]


def test_quick_demo_says_how_the_exemplars_were_picked(demo_run):
    pick = json.loads((demo_run.path / "exemplars.json").read_text())
    assert pick["rule"] == pipeline.AUTO_PICK_RULE and pipeline.AUTO_PICK_RULE in demo_run.stdout
    assert pick["good"]["ap"] >= pick["bad"]["ap"]
    assert pick["good"]["class"] == pick["good"]["predicted"] and pick["bad"]["class"] == pick["bad"]["predicted"]


def test_quick_demo_history_has_both_phases(demo_run):
    events = runs.Run(demo_run.path).history()
    phases = {(e["phase"], e["type"]) for e in events}
    assert ("unrefined", "epoch_end") in phases and ("refine", "epoch_end") in phases
    assert ("unrefined", "done") in phases and ("refine", "done") in phases


def test_quick_demo_table1_lists_both_models(demo_run):
    header = (demo_run.path / "table1.csv").read_text().splitlines()[0].lower()
    assert "unrefined" in header and "exbl" in header


def test_help_runs_as_a_module_without_error():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "exbl_core", "--help"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert done.returncode == 0
    for command in ("demo", "train", "pick", "refine", "evaluate", "figure"):
        assert command in done.stdout


def test_demo_help_documents_quick_and_the_pick_override(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--good" in out and "--bad" in out and "--data" in out


def test_same_image_as_good_and_bad_exits_2_with_a_clear_message(demo_copy, capsys):
    code, _, err = _main(capsys, "pick", "--run", str(demo_copy), "--good", "3", "--bad", "3")
    assert code == 2
    assert "image 3 was picked as both the good and the bad explanation" in err


def test_index_out_of_range_exits_2_naming_the_range(demo_copy, capsys):
    code, _, err = _main(capsys, "pick", "--run", str(demo_copy), "--good", "0", "--bad", "100000")
    assert code == 2
    assert "bad index 100000 is out of range" in err


def test_only_one_of_good_and_bad_is_refused(demo_copy, capsys):
    code, _, err = _main(capsys, "pick", "--run", str(demo_copy), "--good", "0")
    assert code == 2 and "both --good and --bad" in err


def test_demo_on_a_missing_data_path_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no_such_dataset"
    code, _, err = _main(capsys, "demo", "--quick", "--data", str(missing), "--out", str(tmp_path / "run"))
    assert code == 2
    assert f"{missing}: data path does not exist" in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_step_on_a_missing_run_folder_exits_2(tmp_path, capsys):
    code, _, err = _main(capsys, "evaluate", "--run", str(tmp_path / "nothing"))
    assert code == 2 and "run folder does not exist" in err


def test_step_commands_continue_a_run_folder(demo_copy, capsys):
    before = json.loads((demo_copy / "exemplars.json").read_text())
    good, bad = before["bad"]["index"], before["good"]["index"]  # swapped by hand
    assert _main(capsys, "pick", "--run", str(demo_copy), "--good", str(good), "--bad", str(bad))[0] == 0
    pick = json.loads((demo_copy / "exemplars.json").read_text())
    assert (pick["good"]["index"], pick["bad"]["index"], pick["rule"]) == (good, bad, "user")

    (demo_copy / "metrics.json").unlink()
    (demo_copy / "figure3.png").unlink()
    assert _main(capsys, "refine", "--run", str(demo_copy), "--epochs", "1", "--distance", "normalized")[0] == 0
    assert runs.read_json(demo_copy / "config.json")["refine"]["distance"] == "normalized"
    assert _main(capsys, "evaluate", "--run", str(demo_copy))[0] == 0
    assert runs.read_json(demo_copy / "metrics.json")["exemplars"]["good"] == good
    assert _main(capsys, "figure", "--run", str(demo_copy))[0] == 0
    assert (demo_copy / "figure3.png").stat().st_size > 0


def test_train_command_creates_a_new_run_folder(tmp_path, capsys):
    out = tmp_path / "fresh"
    code, stdout, err = _main(capsys, "train", "--run", str(out), "--quick", "--size", "32", "--epochs", "1")
    assert code == 0, err
    assert (out / "unrefined.pt").is_file() and (out / "split.json").is_file()
    assert runs.open_run(out).stage() == "trained"
    assert runs.read_json(out / "config.json")["data"]["size"] == 32


def test_demo_on_a_data_set_smaller_than_the_paper_split_exits_2_with_the_numbers(make_database, tmp_path, capsys):
    root = make_database(per_class=2)
    code, _, err = _main(capsys, "demo", "--data", str(root), "--out", str(tmp_path / "run"))
    assert code == 2
    assert "'COVID' has 2 usable images, fewer than the" in err
