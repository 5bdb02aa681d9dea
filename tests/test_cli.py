"""The command-line interface: the quick demo writes every file, and bad requests get exit code 2.

The quick demo runs once per session (the ``demo_run`` fixture in conftest.py, which makes
each test that uses it slow); the step commands then work on private copies of its run
folder, and the bad-request checks on copies of the tiny run where they can.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exbl_core import cli, config, files, picking, runs
from exbl_core.cli.parser import build_parser
from exbl_core.cli.progress import ProgressPrinter
from exbl_core.data import CLASSES
from exbl_core.figures import model_label

REPO = Path(__file__).resolve().parents[1]
DEMO_FILES = (
    "config.json",
    "split.json",
    "unrefined.pt",
    "pair.json",
    "pair.png",
    "refined-exbl.pt",
    "refined-region-swap.pt",
    "history.jsonl",
    "metrics.json",
    "figure3.png",
    "table1.csv",
)


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
    assert list(metrics["models"]) == ["unrefined", *config.DEMO.methods]
    for model in metrics["models"].values():
        assert set(model) >= {"val", "test", "shortcut_test"}
        for split in ("val", "test", "shortcut_test"):
            leaf = model[split]
            assert 0 <= leaf["accuracy"] <= 1 and 0 <= leaf["activation_precision"] <= 1
            assert 0 <= leaf["confounder_precision"] <= 1 and set(leaf["ap_by_class"]) <= set(CLASSES)
    assert set(metrics["verdicts"]) == set(config.DEMO.methods)
    for verdict in metrics["verdicts"].values():
        assert verdict["label"] in ("shortcut reduced", "shortcut still used", "nothing to unlearn")
        assert "needs the oracle" in verdict["sentence"]
    assert isinstance(metrics["pair"]["good"], int) and isinstance(metrics["pair"]["bad"], int)
    assert metrics["pair"]["good"] != metrics["pair"]["bad"]


def test_quick_demo_says_how_the_exemplars_were_picked(demo_run):
    pick = json.loads((demo_run.path / "pair.json").read_text())
    assert pick["rule"] == picking.AUTO_PICK_RULE and picking.AUTO_PICK_RULE in demo_run.stdout
    assert pick["good"]["ap"] >= pick["bad"]["ap"]
    assert pick["good"]["class"] == pick["good"]["predicted"] and pick["bad"]["class"] == pick["bad"]["predicted"]


def test_quick_demo_history_has_both_phases(demo_run):
    events = runs.Run(demo_run.path).history()
    phases = {(e["phase"], e["type"]) for e in events}
    assert ("unrefined", "epoch_end") in phases and ("refine", "epoch_end") in phases
    assert ("unrefined", "done") in phases and ("refine", "done") in phases
    refined = {e.get("method") for e in events if e["phase"] == "refine" and e["type"] == "done"}
    assert refined == set(config.DEMO.methods), "each refinement's events name its method"


def test_quick_demo_table1_lists_both_models(demo_run):
    header = (demo_run.path / "table1.csv").read_text().splitlines()[0].lower()
    assert "unrefined" in header and "exbl" in header


@pytest.mark.slow
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


def test_same_image_as_good_and_bad_exits_2_with_a_clear_message(run_copy, capsys):
    code, _, err = _main(capsys, "pick", "--run", str(run_copy), "--good", "3", "--bad", "3")
    assert code == 2
    assert "image 3 was picked as both the good and the bad explanation" in err


def test_index_out_of_range_exits_2_naming_the_range(run_copy, capsys):
    code, _, err = _main(capsys, "pick", "--run", str(run_copy), "--good", "0", "--bad", "100000")
    assert code == 2
    assert "bad index 100000 is out of range" in err


def test_only_one_of_good_and_bad_is_refused(run_copy, capsys):
    code, _, err = _main(capsys, "pick", "--run", str(run_copy), "--good", "0")
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
    before = json.loads((demo_copy / "pair.json").read_text())
    good, bad = before["bad"]["index"], before["good"]["index"]  # swapped by hand
    assert _main(capsys, "pick", "--run", str(demo_copy), "--good", str(good), "--bad", str(bad))[0] == 0
    pick = json.loads((demo_copy / "pair.json").read_text())
    assert (pick["good"]["index"], pick["bad"]["index"], pick["rule"]) == (good, bad, "user")

    (demo_copy / "figure3.png").unlink()
    assert _main(capsys, "refine", "--run", str(demo_copy), "--epochs", "1", "--distance", "normalized")[0] == 0
    assert files.read_json(demo_copy / "config.json")["refine"]["distance"] == "normalized"
    assert _main(capsys, "evaluate", "--run", str(demo_copy))[0] == 0
    assert files.read_json(demo_copy / "metrics.json")["pair"]["good"] == good
    assert _main(capsys, "figure", "--run", str(demo_copy))[0] == 0
    assert (demo_copy / "figure3.png").stat().st_size > 0


def test_train_command_creates_a_new_run_folder(tmp_path, capsys):
    out = tmp_path / "fresh"
    code, stdout, err = _main(capsys, "train", "--run", str(out), "--quick", "--size", "32", "--epochs", "1")
    assert code == 0, err
    assert (out / "unrefined.pt").is_file() and (out / "split.json").is_file()
    assert runs.open_run(out).stage() == "trained"
    assert files.read_json(out / "config.json")["data"]["size"] == 32


def test_demo_on_a_data_set_smaller_than_the_paper_split_exits_2_with_the_numbers(make_database, tmp_path, capsys):
    root = make_database(per_class=2)
    code, _, err = _main(capsys, "demo", "--data", str(root), "--out", str(tmp_path / "run"))
    assert code == 2
    assert "'COVID' has 2 usable images, fewer than the" in err


# --------------------------------------------------------------------------- backbone weights


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_with_a_weights_file_records_it_and_trains_with_the_first_six_blocks_as_loaded(
    tmp_path, weights_file, mobilenet_reference, capsys
):
    out = tmp_path / "run"
    code, stdout, err = _main(
        capsys, "train", "--run", str(out), "--quick", "--size", "32", "--epochs", "1", "--weights", str(weights_file)
    )
    assert code == 0, err
    model = files.read_json(out / "config.json")["model"]
    assert model == {"weights": "file", "weights_file": str(weights_file), "weights_sha256": _sha256(weights_file), "frozen_blocks": 6}
    assert f"Model: starts from the weights in {weights_file}" in stdout and "features[:6] frozen" in stdout
    trained = torch.load(out / "unrefined.pt", weights_only=True)["state_dict"]
    loaded = mobilenet_reference.state_dict()
    assert torch.equal(trained["features.5.conv.0.0.weight"], loaded["features.5.conv.0.0.weight"]), "features[:6] must stay frozen"
    assert not torch.equal(trained["features.6.conv.0.0.weight"], loaded["features.6.conv.0.0.weight"]), "features[6:] must train"


def test_synthetic_data_starts_from_random_weights_by_default_and_says_so(demo_run):
    model = files.read_json(demo_run.path / "config.json")["model"]
    assert model == {"weights": "random", "weights_file": None, "weights_sha256": None, "frozen_blocks": 0}
    assert "Model: starts from random weights; every layer trained" in demo_run.stdout


@pytest.mark.parametrize("damage", ["foreign", "truncated"])
def test_train_with_a_bad_weights_file_exits_2_in_one_line_naming_it_and_writes_no_run(tmp_path, weights_file, capsys, damage):
    if damage == "foreign":
        torch.save(torch.nn.Linear(3, 3).state_dict(), weights_file)
    else:
        weights_file.write_bytes(weights_file.read_bytes()[:1000])
    out = tmp_path / "run"
    code, _, err = _main(capsys, "train", "--run", str(out), "--quick", "--weights", str(weights_file))
    assert code == 2 and err.startswith(f"error: {weights_file}: ") and err.count("\n") == 1
    assert not (out / "config.json").exists()


def test_train_on_real_data_starts_from_cached_imagenet_by_default(make_database, cached_imagenet, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ("train", "--run", str(out), "--data", str(make_database(per_class=4)), "--per-class", "2", "1", "1", "--size", "32")
    code, stdout, err = _main(capsys, *argv, "--epochs", "1")
    assert code == 0, err
    model = files.read_json(out / "config.json")["model"]
    assert (model["weights"], model["weights_file"], model["weights_sha256"]) == (
        "imagenet",
        str(cached_imagenet),
        _sha256(cached_imagenet),
    )
    assert "Model: starts from ImageNet weights (torchvision MobileNet_V2_Weights.IMAGENET1K_V1" in stdout
    # A run records one start: other weights for the same folder are refused; the same ones train it again with --overwrite.
    code, _, err = _main(capsys, "train", "--run", str(out), "--weights", "random")
    assert code == 2 and "was created to start from ImageNet weights" in err and "needs a new run folder" in err
    assert _main(capsys, *argv, "--weights", "imagenet", "--epochs", "1", "--overwrite")[0] == 0
    assert files.read_json(out / "config.json")["model"]["weights"] == "imagenet"


def test_train_on_real_data_without_cached_imagenet_starts_random_and_names_the_download_command(
    make_database, hub, tmp_path, capsys, caplog
):
    out = tmp_path / "run"
    argv = ("train", "--run", str(out), "--data", str(make_database(per_class=4)), "--per-class", "2", "1", "1", "--size", "32")
    with caplog.at_level(logging.WARNING):
        code, _, err = _main(capsys, *argv, "--epochs", "1")
    assert code == 0, err
    assert files.read_json(out / "config.json")["model"]["weights"] == "random"
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "starting from random weights" in warning and "python -m exbl_core weights --download" in warning


@pytest.mark.slow
def test_demo_on_real_data_puts_the_papers_table1_beside_ours_and_records_the_weights(make_database, weights_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ("demo", "--quick", "--data", str(make_database(per_class=4)), "--per-class", "2", "1", "1", "--size", "64")
    code, stdout, err = _main(capsys, *argv, "--good", "0", "--bad", "1", "--weights", str(weights_file), "--out", str(out))
    assert code == 0, err
    note = f"Started from the weights in {weights_file} (SHA-256 {_sha256(weights_file)}); features[:6] frozen."
    markdown = (out / "table1.md").read_text()
    for text in (stdout, markdown):
        assert "| metric | split | unrefined | eXBL | region-swap | paper: unrefined | paper: eXBL |" in text
        assert "The paper's columns are its Table 1" in text and note in text
    rows = {(r["metric"], r["split"]): r for r in csv.DictReader((out / "table1.csv").open())}
    paper = {(m, s): (r["paper_unrefined"], r["paper_exbl"]) for (m, s), r in rows.items() if r["paper_unrefined"]}
    assert rows[("AP, occlusion (sample)", "test")]["paper_unrefined"] == ""  # the paper had no occlusion
    assert paper == {
        ("Accuracy", "val"): ("0.94", "0.89"),
        ("Accuracy", "test"): ("0.95", "0.90"),
        ("Activation Precision", "val"): ("0.32", "0.34"),
        ("Activation Precision", "test"): ("0.32", "0.35"),
    }
    assert {(r["weights"], r["weights_sha256"], r["frozen_blocks"]) for r in rows.values()} == {("file", _sha256(weights_file), "6")}


def test_synthetic_table1_has_no_paper_columns_but_says_what_it_started_from(demo_run):
    markdown = (demo_run.path / "table1.md").read_text()
    assert "paper" not in markdown.lower()
    assert "Started from random weights; every layer trained." in markdown
    header = (demo_run.path / "table1.csv").read_text().splitlines()[0]
    assert header == (
        "metric,split,unrefined,exbl,region-swap,delta_exbl,delta_region-swap,weights,weights_file,weights_sha256,frozen_blocks"
    )


@pytest.mark.parametrize("term", [{}, {"expl": 0.25}, {"expl": 0.25, "active_triplets": 0.5}])
def test_the_epoch_line_shows_a_methods_term_and_the_active_share_only_where_there_is_one(term, capsys):
    event = {"type": "epoch_end", "phase": "refine", "epoch": 1, "epochs": 8, "loss": 0.5, "ce": 0.4, "seconds": 3.0, "best": True}
    ProgressPrinter()({**event, "val_loss": 0.3, "val_accuracy": 0.9, "val_ap": 0.5, **term})
    line = capsys.readouterr().out
    assert "CE 0.400" in line and ("expl 0.250" in line) == ("expl" in term) and ("active 50%" in line) == ("active_triplets" in term)


def test_explain_writes_gradcam_and_occlusion_of_chosen_images(demo_copy, capsys, tmp_path):
    out = tmp_path / "maps.png"
    code, stdout, err = _main(capsys, "explain", "--run", str(demo_copy), "--out", str(out), "--images", "0", "3", "--patch", "32")
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 shortcut_test images, unrefined model, GradCAM, Occlusion" in stdout


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--explainers", "lime"], "unknown explainer 'lime'"),
        (["--patch", "0"], "patch must be positive"),
        (["--patch", "200"], "patch 200 is larger than the 96-px images"),
        (["--stride", "0"], "stride must be at least 1"),
        (["--infill", "1.5"], "infill must be a number in [0, 1]"),
        (["--explainers", "gradcam", "--patch", "16"], "occlusion settings"),
        (["--images", "9999"], "--images 9999"),
        (["--split", "nowhere"], "--split nowhere"),
    ],
)
def test_explain_refuses_bad_settings_with_one_line_and_writes_nothing(demo_copy, capsys, tmp_path, argv, named):
    out = tmp_path / "maps.png"
    before = {p.name: p.stat().st_mtime_ns for p in demo_copy.iterdir()}
    code, _, err = _main(capsys, "explain", "--run", str(demo_copy), "--out", str(out), *argv)
    assert code == 2
    assert named in err and err.count("\n") == 1
    assert not out.exists()
    assert {p.name: p.stat().st_mtime_ns for p in demo_copy.iterdir()} == before


def test_explain_never_replaces_a_file(demo_copy, capsys, tmp_path):
    out = tmp_path / "mine.png"
    out.write_bytes(b"my own picture")
    code, _, err = _main(capsys, "explain", "--run", str(demo_copy), "--out", str(out))
    assert code == 2 and "exists" in err
    assert out.read_bytes() == b"my own picture"


def test_metrics_json_scores_each_explainer_on_a_fixed_sample(demo_run):
    metrics = json.loads((demo_run.path / "metrics.json").read_text())
    assert list(metrics["explainer_sample"]) == ["test", "shortcut_test"]
    for model in metrics["models"].values():
        assert "by_explainer" not in model["val"]
        for split in metrics["explainer_sample"]:
            by = model[split]["by_explainer"]
            assert list(by) == ["gradcam", "occlusion"]
            for scores in by.values():
                assert scores["n"] == metrics["explainer_sample"][split]
                assert 0.0 <= scores["activation_precision"] <= 1.0 and -1.0 <= scores["deletion"] <= 1.0
            if split == "shortcut_test":
                assert "child_cp" in by["occlusion"]


def test_refine_without_a_method_uses_the_default_the_help_states_and_says_so(demo_copy, capsys):
    """After the demo, config.json's last refinement is region-swap; a bare refine must still be exbl."""
    assert files.read_json(demo_copy / "config.json")["refine"]["method"] == "region-swap"
    before = (demo_copy / "refined-region-swap.pt").read_bytes()
    code, out, err = _main(capsys, "refine", "--run", str(demo_copy), "--epochs", "1")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"Refining with {model_label(config.DEFAULT_METHOD)}")
    assert (demo_copy / "refined-region-swap.pt").read_bytes() == before
    assert f"default {config.DEFAULT_METHOD}" in build_parser()._subparsers._group_actions[0].choices["refine"].format_help()


@pytest.mark.slow
def test_a_non_ascii_path_prints_on_an_ascii_console(tmp_path):
    out = tmp_path / "Lüngen-run"
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "exbl_core", "explain", "--run", str(out), "--out", str(tmp_path / "maps.png")],
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2
    assert b"L\\xfcngen-run" in done.stderr and b"Traceback" not in done.stderr
