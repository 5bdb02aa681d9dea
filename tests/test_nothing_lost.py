"""Nothing is ever lost: the command line writes, replaces or deletes only the
files it owns, in run folders; options are checked before anything is written and mean
what they say; one writer at a time per run; every refusal is one line and exit code 2.

The runs here are tiny (32 px, 2 images per class and split, one epoch), so each CLI
step takes a second or two. Mask matching and binarisation are in test_data.py.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exbl_core import checkpoints, cli, files, pipeline, run_data, runs
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.model import build_model
from exbl_core.synthetic import SyntheticConfig
from exbl_core.training import TrainingError
from studio.jobs import JobRunner
from tests.conftest import TINY_RUN, lung_mask, save_png

# On-disk names: the lock of a run folder, and where a replaced run waits for the new first checkpoint.
LOCK, ASIDE = ".lock", ".previous-run"
USER_FILES = {  # a user's own folder, with names a run would use too
    "config.json": b'{"my": "settings"}',
    "unrefined.pt": b"my own weights",
    "refined.pt": b"my other weights",
    "metrics.json": b'{"mine": 1}',
    "history.jsonl": b'{"my": "log"}\n',
    "pair.json": b"{}",
    "figure3.png": b"my figure",
    "table1.csv": b"my,table\n",
}


def _main(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def refused(capsys, *argv: str) -> str:
    """Run a command that must be refused: exit code 2 and one error line on stderr (after any
    progress bars of a training that failed), no traceback."""
    code, err = _main(capsys, *argv)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, (code, err[-2000:])
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err[-2000:]
    return errors[0][errors[0].index("error: ") :]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the lock file aside) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK}


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    for name, data in USER_FILES.items():
        (path / name).write_bytes(data)
    return path


def _fail_before_any_checkpoint(monkeypatch) -> None:
    def fit(*_args, **_kwargs):
        raise TrainingError("unrefined training: the loss became nan in epoch 1, batch 1")

    monkeypatch.setattr(pipeline, "fit", fit)


# --------------------------------------------------------------------------- folders that are not runs


@pytest.mark.parametrize("extra", [("--data", "missing-data-set"), TINY_RUN])
def test_train_on_a_folder_without_config_json_touches_none_of_its_files(tmp_path, capsys, extra):
    folder = user_folder(tmp_path / "mine")
    message = refused(capsys, "train", "--run", folder, *extra)
    assert "not empty and is not a run" in message or "data path does not exist" in message
    assert snapshot(folder) == USER_FILES


def test_demo_into_a_folder_that_is_not_a_run_refuses_and_touches_nothing(tmp_path, capsys):
    folder = user_folder(tmp_path / "mine")
    assert "not empty and is not a run" in refused(capsys, "demo", "--out", folder, *TINY_RUN)
    assert "not empty and is not a run" in refused(capsys, "demo", "--out", folder, *TINY_RUN, "--overwrite")
    assert snapshot(folder) == USER_FILES


def test_demo_into_an_existing_run_needs_overwrite(run_copy, capsys):
    before = snapshot(run_copy)
    assert "a run already exists here; pass --overwrite" in refused(capsys, "demo", "--out", run_copy, *TINY_RUN)
    assert snapshot(run_copy) == before


def test_overwrite_keeps_the_old_run_until_the_new_model_has_a_checkpoint(run_copy, capsys, monkeypatch):
    (run_copy / "notes.txt").write_text("the user's own")
    before = snapshot(run_copy)
    _fail_before_any_checkpoint(monkeypatch)
    assert "the loss became nan" in refused(capsys, "demo", "--out", run_copy, *TINY_RUN, "--overwrite")
    assert snapshot(run_copy) == before, "the old run is back, byte for byte"
    monkeypatch.undo()
    code, err = _main(capsys, "train", "--run", run_copy, *TINY_RUN, "--seed", "4", "--epochs", "1", "--overwrite")
    assert code == 0, err
    assert not (run_copy / ASIDE).exists() and not (run_copy / runs.refined_file("exbl")).exists()
    assert files.read_json(run_copy / runs.CONFIG)["train"]["seed"] == 4
    assert (run_copy / "notes.txt").read_text() == "the user's own"


def test_train_on_a_trained_run_needs_overwrite(run_copy, capsys):
    before = snapshot(run_copy)
    assert "already has a trained model" in refused(capsys, "train", "--run", run_copy, "--epochs", "1")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_run_pointing_at_a_file_is_refused_in_one_line(tmp_path, capsys, command):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    assert "is a file, not a run folder" in refused(capsys, command, "--run", path)
    assert path.read_text() == "not a folder"


# --------------------------------------------------------------------------- options checked before anything is written


BAD_NEW_RUN_OPTIONS = [("--size", "-5"), ("--size", "100000"), ("--seed", "-1"), ("--seed", str(2**40)), ("--per-class", "0", "0", "0")]


@pytest.mark.parametrize(
    "command, options",
    [(c, o) for c in ("demo", "train") for o in BAD_NEW_RUN_OPTIONS] + [("train", ("--epochs", "0"))],
)
def test_bad_data_options_are_refused_before_a_run_folder_exists(tmp_path, capsys, command, options):
    named = " ".join(options)
    target = tmp_path / "run"
    message = refused(capsys, command, "--out" if command == "demo" else "--run", target, "--quick", *options)
    assert named in message
    assert not target.exists()


@pytest.mark.parametrize(
    "option, value",
    [("--margin", "inf"), ("--lr", "inf"), ("--lr", "nan"), ("--lr", "-1"), ("--lr", "0"), ("--lambda-expl", "inf"), ("--patience", "0")],
)
def test_bad_refinement_settings_exit_2_and_change_nothing(run_copy, capsys, option, value):
    before = snapshot(run_copy)
    assert f"{option} {value}" in refused(capsys, "refine", "--run", run_copy, option, value)
    assert snapshot(run_copy) == before


def test_a_failed_refinement_leaves_config_json_as_it_was(run_copy, capsys, monkeypatch):
    before = (run_copy / runs.CONFIG).read_bytes()
    _fail_before_any_checkpoint(monkeypatch)
    refused(capsys, "refine", "--run", run_copy, "--epochs", "2", "--margin", "3")
    assert (run_copy / runs.CONFIG).read_bytes() == before


def test_refinement_records_the_settings_it_used(run_copy, capsys):
    code, err = _main(capsys, "refine", "--run", run_copy, "--epochs", "1", "--lambda-expl", "0.5")
    assert code == 0, err
    start = [e for e in runs.Run(run_copy).history() if e["type"] == "start" and e["phase"] == "refine"][-1]
    assert start["settings"]["lambda_expl"] == 0.5 and start["settings"]["epochs"] == 1
    meta = checkpoints.load_checkpoint(run_copy / runs.refined_file("exbl"), build_model(num_classes=4))
    assert meta["settings"]["lambda_expl"] == 0.5
    assert files.read_json(run_copy / runs.CONFIG)["refine"]["lambda_expl"] == 0.5, "a setting that worked is the next default"


def test_refinement_that_never_reaches_a_finite_loss_is_an_error_not_a_success(run_copy, capsys):
    before = (run_copy / runs.refined_file("exbl")).read_bytes()
    message = refused(capsys, "refine", "--run", run_copy, "--epochs", "1", "--lr", "1e30")
    assert f"{runs.refined_file('exbl')} was not written" in message
    assert (run_copy / runs.refined_file("exbl")).read_bytes() == before


@pytest.mark.parametrize("rows", [("999",), ("-1",), ("0", "999")])
def test_figure_rows_out_of_range_are_refused_and_nothing_is_written(run_copy, capsys, rows):
    before = snapshot(run_copy)
    message = refused(capsys, "figure", "--run", run_copy, "--rows", *rows)
    assert "999" in message or "-1" in message
    assert snapshot(run_copy) == before


def test_a_command_line_setting_wins_over_config_json_on_a_retry(tmp_path, capsys):
    run = run_data.new_run(tmp_path / "run", SyntheticConfig(size=64, n_train=2, n_val=2, n_test=2), TrainConfig(epochs=3), RefineConfig())
    code, err = _main(capsys, "train", "--run", run.path, "--size", "32", "--seed", "7", "--epochs", "1")
    assert code == 0, err
    config = files.read_json(run.file(runs.CONFIG))
    assert config["data"]["size"] == 32 and config["data"]["seed"] == 7
    assert config["train"]["epochs"] == 1 and config["train"]["seed"] == 7
    assert checkpoints.load_checkpoint(run.file(runs.UNREFINED), build_model(num_classes=4))["image_size"] == 32
    assert not (run.path / ASIDE).exists()


# --------------------------------------------------------------------------- data sets, masks and paths


def test_a_bad_mask_stops_train_before_a_run_exists_and_skip_bad_lists_it(make_database, tmp_path, capsys):
    root = make_database(per_class=4)
    save_png(root / "Normal" / "masks" / "Normal-2.png", lung_mask(256, 256) // 255)  # 0/1: fine
    save_png(root / "COVID" / "masks" / "COVID-3.png", lung_mask(256, 256) * 0)  # empty: bad
    target = tmp_path / "run"
    assert "COVID-3.png: lung mask is empty" in refused(
        capsys, "train", "--run", target, "--data", root, "--size", "32", "--per-class", "1", "1", "1"
    )
    assert not target.exists()
    args = ("train", "--run", target, "--data", root, "--size", "32", "--per-class", "1", "1", "1", "--epochs", "1", "--skip-bad")
    code, err = _main(capsys, *args)
    assert code == 0, err
    split = files.read_json(target / runs.SPLIT)
    assert any("COVID-3.png: lung mask is empty" in s for s in split["skipped"])


def test_relative_data_path_is_stored_absolute_and_works_from_another_folder(make_database, tmp_path, capsys, monkeypatch):
    root = make_database(per_class=3)
    monkeypatch.chdir(root.parent)
    code, err = _main(capsys, "train", "--run", "run", "--data", root.name, "--size", "32", "--per-class", "1", "1", "1", "--epochs", "1")
    assert code == 0, err
    assert Path(files.read_json(tmp_path / "run" / runs.CONFIG)["data"]["path"]) == root
    monkeypatch.chdir(tmp_path / "run")
    code, err = _main(capsys, "evaluate", "--run", ".")
    assert code == 0, err


# --------------------------------------------------------------------------- what a run folder holds


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: [],
        lambda c: {**c, "data": 5},
        lambda c: {k: v for k, v in c.items() if k != "train"},
        lambda c: {**c, "train": {**c["train"], "colour": "blue"}},
        lambda c: {**c, "data": {**c["data"], "size": -5}},
    ],
    ids=["a-list", "data-is-a-number", "no-train-section", "unknown-setting", "bad-size"],
)
def test_config_json_of_the_wrong_shape_is_one_line_naming_it(run_copy, capsys, edit):
    config = json.loads((run_copy / runs.CONFIG).read_text())
    (run_copy / runs.CONFIG).write_text(json.dumps(edit(config)))
    assert "config.json" in refused(capsys, "evaluate", "--run", run_copy)


def test_infinity_in_config_json_is_refused_naming_it(run_copy, capsys):
    config = json.loads((run_copy / runs.CONFIG).read_text())
    config["refine"]["margin"] = math.inf
    (run_copy / runs.CONFIG).write_text(json.dumps(config))  # Python writes it as the non-standard Infinity
    message = refused(capsys, "refine", "--run", run_copy)
    assert "config.json" in message and "margin=inf" in message


def test_evaluate_without_a_model_exits_2_and_writes_no_metrics(tmp_path, capsys):
    run = run_data.new_run(tmp_path / "run", SyntheticConfig(size=32, n_train=2, n_val=2, n_test=2), TrainConfig(epochs=1), RefineConfig())
    assert "nothing to evaluate yet (unrefined.pt is missing); run train first" in refused(capsys, "evaluate", "--run", run.path)
    assert not run.has(runs.METRICS)


def test_a_killed_writers_temporary_file_is_removed_at_the_next_command(run_copy, capsys):
    leftover = run_copy / ".unrefined.pt.x8f2k1.tmp"
    leftover.write_bytes(b"\0" * 1_000_000)
    code, err = _main(capsys, "evaluate", "--run", run_copy)
    assert code == 0, err
    assert not leftover.exists()


def test_evaluate_says_what_it_wrote_and_nothing_more(run_copy, capsys):
    (run_copy / runs.METRICS).unlink(missing_ok=True)
    assert cli.main(["evaluate", "--run", str(run_copy)]) == 0
    out = capsys.readouterr().out
    assert f"Wrote {run_copy / runs.METRICS}" in out and "figure3.png" not in out


# --------------------------------------------------------------------------- one writer at a time


def _hold(path: str, ready, release) -> None:
    with runs.locked(path):
        ready.set()
        release.wait(60)


@pytest.fixture
def held(run_copy):
    """Another process holding the run's lock, as a second CLI or the app would."""
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(run_copy), ready, release), daemon=True)
    proc.start()
    assert ready.wait(30)
    yield proc
    release.set()
    proc.join(30)


@pytest.mark.parametrize("argv", [("refine", "--epochs", "1"), ("evaluate",), ("train", "--overwrite", *TINY_RUN)])
def test_a_second_writer_exits_2_naming_the_process(run_copy, held, capsys, argv):
    before = snapshot(run_copy)
    command, *rest = argv
    assert f"run folder is in use by process {held.pid}" in refused(capsys, command, "--run", run_copy, *rest)
    assert snapshot(run_copy) == before


def test_the_apps_worker_takes_the_same_lock(run_copy, held):
    runner = JobRunner()
    ran = threading.Event()
    job = runner.start("refine", str(run_copy), lambda emit, cancel: ran.set() or "done")
    assert runner.wait(30)
    assert job.status == "failed" and f"in use by process {held.pid}" in job.error
    assert not ran.is_set()


@pytest.mark.slow
def test_the_cli_is_refused_while_an_app_job_holds_the_run_and_goes_on_after_it(run_copy, capsys):
    runner = JobRunner()
    inside, release = threading.Event(), threading.Event()
    runner.start("evaluate", str(run_copy), lambda emit, cancel: inside.set() or ("done" if release.wait(30) else "cancelled"))
    assert inside.wait(30), "the app's job never started"  # it runs under the run's lock
    assert f"in use by process {os.getpid()}" in refused(capsys, "evaluate", "--run", run_copy)
    release.set()
    assert runner.wait(30)
    assert _main(capsys, "evaluate", "--run", run_copy)[0] == 0


# --------------------------------------------------------------------------- the property


TARGETS = ("run", "user", "file", "new")


@st.composite
def cli_step(draw) -> tuple[str, list[str]]:
    """One CLI command on one of the targets, with options drawn from valid and invalid values."""
    target = draw(st.sampled_from(TARGETS))
    command = draw(st.sampled_from(("demo", "train", "pick", "refine", "evaluate", "figure")))
    argv = [command, "--out" if command == "demo" else "--run", "{" + target + "}"]
    if command in ("demo", "train"):
        argv += [*TINY_RUN[:1], "--per-class", *draw(st.sampled_from((("2", "2", "2"), ("0", "0", "0"))))]
        argv += ["--size", draw(st.sampled_from(("32", "32", "-5", "100000")))]
        argv += ["--overwrite"] if draw(st.booleans()) else []
        argv += ["--epochs", draw(st.sampled_from(("1", "0")))] if command == "train" else []
    if command == "pick" and draw(st.booleans()):
        argv += ["--good", draw(st.sampled_from(("0", "-1", "999"))), "--bad", draw(st.sampled_from(("1", "0")))]
    if command == "refine":
        argv += ["--epochs", "1", "--lr", draw(st.sampled_from(("1e-3", "inf", "-1", "nan")))]
        argv += ["--margin", draw(st.sampled_from(("1", "inf", "-2")))]
    if command == "figure" and draw(st.booleans()):
        argv += ["--rows", draw(st.sampled_from(("0", "-1", "999")))]
    return target, argv


@pytest.mark.slow
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(cli_step(), min_size=1, max_size=4))
def test_any_sequence_of_commands_keeps_user_files_and_leaves_loadable_checkpoints(tiny_run, steps):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = {"run": root / "run", "user": user_folder(root / "user"), "file": root / "a-file", "new": root / "new"}
        shutil.copytree(tiny_run, paths["run"], dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOCK))
        (paths["run"] / "notes.txt").write_text("the user's own")
        paths["file"].write_text("a file of the user's")
        user = {**{f"user/{k}": v for k, v in USER_FILES.items()}, "run/notes.txt": b"the user's own", "a-file": b"a file of the user's"}
        for _target, argv in steps:
            code = cli.main([a.format(**{k: str(v) for k, v in paths.items()}) for a in argv])
            assert code in (0, 2), argv
            found = snapshot(root)
            assert {k: v for k, v in found.items() if k in user} == user, argv
            mine = {k for k in found if k not in user}
            assert all(runs.RUN_FILES.fullmatch(Path(k).name) and ASIDE not in k for k in mine), (argv, mine)
            for name in (k for k in mine if k.endswith(".pt")):
                checkpoints.load_checkpoint(root / name, build_model(num_classes=4))
