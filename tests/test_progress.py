"""The progress line of a background job: one bar for the whole job, time left from measured epochs, true step states."""

from __future__ import annotations

import pytest

from studio.progress import current_step, duration, epoch_seconds, job_progress, run_attempt, step_states

T0 = 1000.0


def epochs(phase: str, n: int, done: int, seconds: float, t: float, batches: int = 4) -> list[dict]:
    """A phase's events: start, then ``done`` epochs of ``seconds`` each with their batches."""
    out = [{"type": "start", "phase": phase, "epochs": n, "t": t}]
    for epoch in range(1, done + 1):
        for b in range(1, batches + 1):
            out.append(
                {
                    "type": "batch_end",
                    "phase": phase,
                    "epoch": epoch,
                    "batch": b,
                    "batches": batches,
                    "t": t + (epoch - 1 + b / batches) * seconds,
                }
            )
        out.append({"type": "epoch_end", "phase": phase, "epoch": epoch, "epochs": n, "t": t + epoch * seconds})
    return out


def test_time_left_is_remaining_epochs_times_measured_seconds_per_epoch() -> None:
    events = epochs("unrefined", 10, 4, 6.0, T0)
    p = job_progress(events, T0, T0 + 24.0)
    assert p.fraction == pytest.approx(0.4)
    assert p.seconds_left == pytest.approx(6 * 6.0)
    assert "epoch 4 of 10" in p.text and "24 s elapsed" in p.text and "about 36 s left" in p.text and "at most" not in p.text


def test_the_first_epoch_estimates_from_its_batches() -> None:
    events = epochs("unrefined", 5, 0, 8.0, T0)
    events.append({"type": "batch_end", "phase": "unrefined", "epoch": 1, "batch": 1, "batches": 4, "t": T0 + 2.0})
    assert epoch_seconds(run_attempt(events, "unrefined")) == pytest.approx(8.0)
    assert job_progress(events, T0, T0 + 2.0).seconds_left == pytest.approx(4.75 * 8.0)


def test_before_any_batch_the_time_left_is_not_guessed() -> None:
    p = job_progress(epochs("refine", 3, 0, 1.0, T0), T0, T0 + 1.0)
    assert p.seconds_left is None and "known after the first batch" in p.text


def test_a_demo_bar_covers_both_phases_and_does_not_restart_at_refinement() -> None:
    plan = [{"type": "plan", "phases": {"unrefined": 14, "refine": 3}, "t": T0}]
    training = epochs("unrefined", 14, 14, 5.0, T0) + [{"type": "done", "phase": "unrefined", "t": T0 + 70}]
    refining = epochs("refine", 3, 1, 7.0, T0 + 71)
    p = job_progress(plan + training + refining, T0, T0 + 78)
    assert p.fraction == pytest.approx(15 / 17)  # not 1/3: the bar goes on from where training left it
    assert p.seconds_left == pytest.approx(2 * 7.0)
    assert p.text.startswith("Step 3 of 4 · Refinement: epoch 1 of 3")


def test_a_second_refinement_in_the_same_job_goes_on_from_the_first() -> None:
    plan = [{"type": "plan", "phases": {"unrefined": 4, "refine": 3 + 8}, "t": T0}]
    training = epochs("unrefined", 4, 4, 5.0, T0) + [{"type": "done", "phase": "unrefined", "t": T0 + 20}]
    first = epochs("refine", 3, 3, 5.0, T0 + 20) + [{"type": "done", "phase": "refine", "t": T0 + 35}]
    second = epochs("refine", 8, 2, 5.0, T0 + 35)
    before = job_progress(plan + training + first, T0, T0 + 35).fraction
    p = job_progress(plan + training + first + second, T0, T0 + 45)
    assert before == pytest.approx(7 / 15) and p.fraction == pytest.approx(9 / 15)  # forward, not back to 6/15
    assert p.seconds_left == pytest.approx(6 * 5.0)
    assert "Refinement: epoch 2 of 8" in p.text


def test_a_demo_times_refinement_from_training_until_it_has_its_own_epochs() -> None:
    plan = [{"type": "plan", "phases": {"unrefined": 4, "refine": 2}, "t": T0}]
    p = job_progress(plan + epochs("unrefined", 4, 2, 10.0, T0), T0, T0 + 20)
    assert p.seconds_left == pytest.approx((2 + 2) * 10.0)


def test_early_stopping_counts_the_phase_as_finished() -> None:
    events = epochs("unrefined", 60, 7, 1.0, T0) + [{"type": "early_stop", "phase": "unrefined", "epoch": 7, "best_epoch": 2, "t": T0 + 7}]
    assert job_progress(events, T0, T0 + 7).fraction == 1.0


def test_the_running_step_and_the_steps_after_it_are_not_done_although_their_files_exist() -> None:
    events = [{"type": "plan", "phases": {"unrefined": 14, "refine": 3}}, *epochs("unrefined", 14, 1, 1.0, T0)]
    assert current_step(events) == 0
    assert step_states([True, True, True, True], current_step(events)) == ["running", "not yet", "not yet", "not yet"]
    events.append({"type": "step", "step": "evaluate", "message": "Evaluating…"})
    assert step_states([True, True, True, False], current_step(events)) == ["done", "done", "done", "running"]


def test_without_a_job_the_steps_follow_the_files() -> None:
    assert step_states([True, True, False, False], None) == ["done", "done", "not yet", "not yet"]


@pytest.mark.parametrize(("seconds", "text"), [(42.4, "42 s"), (185, "3 min 05 s"), (3720, "1 h 02 min")])
def test_durations_are_short(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def validated(phase: str, n: int, done: int, train: float, validation: float, t: float) -> list[dict]:
    """A phase's events where each epoch trains for ``train`` seconds (two batches), then validates for ``validation``."""
    out = [{"type": "start", "phase": phase, "epochs": n, "t": t}]
    for epoch in range(1, done + 1):
        begin = t + (epoch - 1) * (train + validation)
        out += [{"type": "batch_end", "phase": phase, "epoch": epoch, "batch": b, "batches": 2, "t": begin + b * train / 2} for b in (1, 2)]
        out.append({"type": "epoch_end", "phase": phase, "epoch": epoch, "epochs": n, "t": begin + train + validation})
    return out


def refine_job(done: int, passes: float = 10.0) -> list[dict]:
    """A refinement as Start refinement runs it: plan (4 epochs, then evaluation), the pair, then epochs of 8 s + 2 s."""
    plan = {"type": "plan", "phases": {"refine": 4}, "after": {"evaluate": passes}, "t": T0}
    return [plan, {"type": "step", "step": "pick", "message": "Saving the pair…", "t": T0}, *validated("refine", 4, done, 8.0, 2.0, T0)]


def test_the_time_left_includes_evaluation_timed_in_validation_passes() -> None:
    p = job_progress(refine_job(1), T0, T0 + 10)
    assert p.seconds_left == pytest.approx(3 * 10.0 + 10 * 2.0)  # three epochs, then 10 validation passes of 2 s
    assert "about 50 s left" in p.text


def test_after_the_last_epoch_the_time_left_is_the_evaluation_and_it_runs_down() -> None:
    events = refine_job(4) + [{"type": "done", "phase": "refine", "t": T0 + 40}]
    assert job_progress(events, T0, T0 + 40).seconds_left == pytest.approx(20.0), "not 0: evaluation is still to come"
    events.append({"type": "step", "step": "evaluate", "message": "Evaluating…", "t": T0 + 40})
    assert job_progress(events, T0, T0 + 52).seconds_left == pytest.approx(8.0)
    assert job_progress(events, T0, T0 + 70).seconds_left == 0.0, "never negative when evaluation runs longer than planned"


def test_before_the_first_validation_the_line_says_evaluation_comes_on_top() -> None:
    events = refine_job(0) + [{"type": "batch_end", "phase": "refine", "epoch": 1, "batch": 1, "batches": 2, "t": T0 + 4}]
    p = job_progress(events, T0, T0 + 4)
    assert p.seconds_left == pytest.approx(3.5 * 8.0)  # training only: a validation pass has not been timed yet
    assert "left in training, then evaluation" in p.text


def test_a_step_that_a_later_step_followed_counts_no_more() -> None:
    plan = {"type": "plan", "phases": {"unrefined": 2, "refine": 2}, "after": {"warm": 3.0, "pick": 1.0, "evaluate": 10.0}, "t": T0}
    training = validated("unrefined", 2, 2, 8.0, 2.0, T0) + [{"type": "done", "phase": "unrefined", "t": T0 + 20}]
    warm = {"type": "step", "step": "warm", "message": "Computing GradCAM…", "t": T0 + 20}
    pick = {"type": "step", "step": "pick", "message": "Picking…", "t": T0 + 26}
    assert job_progress([plan, *training, warm], T0, T0 + 21).seconds_left == pytest.approx(2 * 10.0 + (6 - 1) + 2 + 20)
    assert job_progress([plan, *training, warm, pick], T0, T0 + 26).seconds_left == pytest.approx(2 * 10.0 + 2 + 20)
