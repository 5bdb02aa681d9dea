"""An interrupted refinement never replaces a finished model.

Each new best epoch of an attempt goes to ``refined-<method>.partial.pt``; only an attempt
that finishes (done or early stop) moves it onto ``refined-<method>.pt``. A cancel (the app's
Cancel), an exception, SIGINT or SIGTERM leaves the earlier finished file byte for byte,
keeps the partial file under its own name, and is recorded in history.jsonl.

The run is tiny (32 px, 2 images per class and split), so an epoch takes well under a second.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from exbl_core import checkpoints, errors, files, pipeline, run_data, run_models, runs
from exbl_core.model import build_model
from exbl_core.training import Interrupted, TrainingError

REPO = Path(__file__).resolve().parents[1]
FINAL, PARTIAL = runs.refined_file("exbl"), runs.partial_file(runs.refined_file("exbl"))
LONG = {"epochs": 200, "patience": 200}  # an attempt that only ends when it is stopped


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refine(run_path: Path, on_event=None, cancel: threading.Event | None = None, overrides: dict | None = None):
    run = runs.open_run(run_path)
    with runs.locked(run_path):
        data = run_data.load_data(run)
        return pipeline.refine_step(run, data, torch.device("cpu"), on_event, cancel, overrides or dict(LONG))


def _after_first_epoch(action):
    """An event callback that calls ``action`` once, when the attempt's first epoch has ended."""
    done = threading.Event()

    def on_event(event: dict) -> None:
        if event["type"] == "epoch_end" and not done.is_set():
            done.set()
            action()

    return on_event


def _last_refine_end(run_path: Path) -> dict:
    return [e for e in runs.Run(run_path).history() if e.get("phase") == "refine" and e["type"] in ("done", "cancelled", "failed")][-1]


def _partial_epoch(run_path: Path) -> int:
    return checkpoints.load_checkpoint(run_path / PARTIAL, build_model(num_classes=4))["epoch"]


def test_a_cancel_after_the_first_epoch_keeps_the_finished_model_and_writes_the_partial_file(run_copy):
    before = sha256(run_copy / FINAL)
    cancel = threading.Event()
    result = _refine(run_copy, _after_first_epoch(cancel.set), cancel)
    assert result.status == "cancelled" and result.best_epoch == 1
    assert sha256(run_copy / FINAL) == before, "the finished model was replaced by an unfinished one"
    assert _partial_epoch(run_copy) == 1
    assert result.kept_message == f"{FINAL} is unchanged (the finished model from before); this attempt's best epoch 1 is in {PARTIAL}"
    end = _last_refine_end(run_copy)
    assert end["type"] == "cancelled" and end["method"] == "exbl"
    assert end["kept"] == {"model": FINAL, "model_unchanged": True, "file": PARTIAL, "epoch": 1}


def test_a_refinement_that_raises_midway_keeps_the_finished_model_and_records_the_failure(run_copy):
    before = sha256(run_copy / FINAL)

    def boom() -> None:
        raise TrainingError("refine training: the loss became nan in epoch 2, batch 1")

    with pytest.raises(TrainingError, match="loss became nan"):
        _refine(run_copy, _after_first_epoch(boom))
    assert sha256(run_copy / FINAL) == before
    assert _partial_epoch(run_copy) == 1
    end = _last_refine_end(run_copy)
    assert end["type"] == "failed" and end["method"] == "exbl" and "loss became nan" in end["error"]
    assert end["kept"]["file"] == PARTIAL and end["kept"]["model_unchanged"] is True


def test_a_keyboard_interrupt_is_recorded_and_says_what_was_kept(run_copy):
    before = sha256(run_copy / FINAL)

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=rf"{re.escape(FINAL)} is unchanged .* best epoch 1 is in {re.escape(PARTIAL)}"):
        _refine(run_copy, _after_first_epoch(interrupt))
    assert sha256(run_copy / FINAL) == before
    end = _last_refine_end(run_copy)
    assert end["type"] == "cancelled" and end["reason"] == "interrupted" and end["kept"]["epoch"] == 1


def test_an_interrupt_before_any_epoch_keeps_nothing_of_the_attempt_and_says_so(run_copy):
    before = sha256(run_copy / FINAL)
    cancel = threading.Event()
    cancel.set()
    result = _refine(run_copy, cancel=cancel)
    assert result.status == "cancelled" and result.best_epoch == 0
    assert sha256(run_copy / FINAL) == before and not (run_copy / PARTIAL).exists()
    assert result.kept_message.endswith("no epoch of this attempt finished, nothing of it was kept")


def test_a_finished_attempt_moves_its_best_epoch_onto_the_model_and_leaves_no_partial_file(run_copy):
    before = sha256(run_copy / FINAL)
    result = _refine(run_copy, overrides={"epochs": 1})
    assert result.status == "done"
    assert sha256(run_copy / FINAL) != before and not (run_copy / PARTIAL).exists()
    assert _last_refine_end(run_copy)["type"] == "done"


def test_a_partial_file_is_never_taken_for_the_methods_model(run_copy):
    cancel = threading.Event()
    _refine(run_copy, _after_first_epoch(cancel.set), cancel)
    assert (run_copy / PARTIAL).is_file()
    (run_copy / FINAL).unlink()
    run = runs.open_run(run_copy)
    assert "exbl" not in run_models.models_in(run) and run_models.refined(run) == []
    with pytest.raises(errors.RunError, match=f"no exbl model yet \\({re.escape(FINAL)} is missing\\)"):
        run_models.load_model(run, "exbl")


def test_without_a_finished_model_the_message_says_there_is_still_none(run_copy):
    (run_copy / FINAL).unlink()
    cancel = threading.Event()
    result = _refine(run_copy, _after_first_epoch(cancel.set), cancel)
    assert not (run_copy / FINAL).exists()
    assert result.kept_message == f"there is still no finished {FINAL}; this attempt's best epoch 1 is in {PARTIAL}"


def test_an_interrupted_attempt_leaves_config_json_as_it_was(run_copy):
    before = (run_copy / runs.CONFIG).read_bytes()
    cancel = threading.Event()
    _refine(run_copy, _after_first_epoch(cancel.set), cancel, {**LONG, "lambda_expl": 0.25})
    assert (run_copy / runs.CONFIG).read_bytes() == before


def test_the_apps_cancel_message_says_what_was_kept(run_copy):
    from studio import live

    cancel = threading.Event()
    events: list[dict] = []

    def on_event(event: dict) -> None:
        events.append(event)
        if event["type"] == "epoch_end":
            cancel.set()

    _refine(run_copy, on_event, cancel)
    assert (
        live._kept(events)
        == f"Epoch 1, its best, was kept aside in {PARTIAL}; the finished model and the results from before are unchanged."
    )


# --------------------------------------------------------------------------- the CLI, stopped by a signal


def _wait_for_first_epoch(history: Path, lines_before: int, proc: subprocess.Popen, deadline_s: float = 240.0) -> None:
    """Poll history.jsonl until this attempt's first epoch_end appears (or the process ends, or the deadline)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        new = history.read_text(encoding="utf-8").splitlines()[lines_before:]
        if any('"type": "epoch_end"' in line for line in new):
            return
        if proc.poll() is not None:
            pytest.fail(f"refine ended before its first epoch: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    pytest.fail("no epoch ended before the deadline")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_cli_stopped_by_a_signal_keeps_the_finished_model_and_says_what_it_kept(run_copy, sig):
    before = sha256(run_copy / FINAL)
    history = run_copy / runs.HISTORY
    lines_before = len(history.read_text(encoding="utf-8").splitlines())
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "exbl_core", "refine", "--run", str(run_copy), "--epochs", "200", "--patience", "200"]
    # A shell that runs the tests in the background ignores SIGINT, and the child would inherit that: restore it.
    restore = (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if sig == signal.SIGINT else None
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, preexec_fn=restore)
    try:
        _wait_for_first_epoch(history, lines_before, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert sha256(run_copy / FINAL) == before, "the finished model was replaced by an unfinished one"
    # An epoch's progress bar ends its line with a carriage return when it closes: on a terminal
    # the next text starts the line, so it counts as a line start here too.
    found = re.search(
        rf"^interrupted: {re.escape(FINAL)} is unchanged \(the finished model from before\); "
        rf"this attempt's best epoch (\d+) is in {re.escape(PARTIAL)}$",
        err.replace("\r", "\n"),
        re.MULTILINE,
    )
    assert found, err[-2000:]
    assert _partial_epoch(run_copy) == int(found.group(1))
    end = _last_refine_end(run_copy)
    assert end["type"] == "cancelled" and end["reason"] == "interrupted" and end["kept"]["file"] == PARTIAL


def _files(folder: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != runs.LOCK}


def test_a_retraining_cancelled_after_its_first_epoch_brings_the_whole_previous_run_back(run_copy):
    """Training a finished run's model again stages it like a refinement: the old run is restored, byte for byte."""
    config = files.read_json(run_copy / runs.CONFIG)
    config["train"].update(LONG)
    files.write_json(run_copy / runs.CONFIG, config)
    before = _files(run_copy)
    run, cancel = runs.open_run(run_copy), threading.Event()
    with runs.locked(run_copy), runs.replacing(run_copy, runs.MODEL_FILES):
        data = run_data.load_data(run)
        result = pipeline.train_step(run, data, torch.device("cpu"), _after_first_epoch(cancel.set), cancel)
    partial = runs.partial_file(runs.UNREFINED)
    assert result.status == "cancelled" and result.best_epoch == 1
    after = _files(run_copy)
    assert after.pop(partial) and after.pop(runs.HISTORY) != before.pop(runs.HISTORY)
    assert after == before, "the finished run was not restored byte for byte"
    end = runs.Run(run_copy).history()[-1]
    assert end["type"] == "cancelled" and end["kept"] == {"model": runs.UNREFINED, "model_unchanged": True, "file": partial, "epoch": 1}
    assert result.kept_message == (
        f"the previous run comes back unchanged, its finished {runs.UNREFINED} included; this attempt's best epoch 1 is in {partial}"
    )
    assert not (run_copy / runs.ASIDE).exists()


def test_a_retraining_that_finishes_replaces_the_run_and_leaves_no_partial_file(run_copy):
    run = runs.open_run(run_copy)
    with runs.locked(run_copy), runs.replacing(run_copy, runs.MODEL_FILES):
        data = run_data.load_data(run)
        result = pipeline.train_step(run, data, torch.device("cpu"))
    assert result.status == "done"
    names = set(_files(run_copy))
    assert runs.UNREFINED in names and runs.partial_file(runs.UNREFINED) not in names
    assert runs.refined_file("exbl") not in names and runs.PAIR not in names, "the replaced run's results stayed"
    assert not (run_copy / runs.ASIDE).exists()
