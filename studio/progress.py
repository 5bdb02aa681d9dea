"""How far a background job has come and how long it has left, read from its events alone.

Pure functions over a job's event list (no Streamlit), so they are tested directly. A
job may run several training phases (the demo trains, then refines): the fraction and
the time left cover the whole job, so the bar does not start again at each phase. A
phase may run several times in one job (the demo refines once per method, each a
``start`` of its own): its planned epochs are the sum, and every run that has ended
counts in full.

The time left has two parts, both measured in this job from each event's ``t``:
- training: the epochs still to run times the median wall seconds per epoch, validation
  included (during the first epoch, extrapolated from its batches);
- the steps after training (evaluation, GradCAM for Explore, the automatic pick): the
  plan gives each one's cost in *validation passes* (its image forward passes divided by
  those of one epoch's validation), and a validation pass takes as long as the time from
  an epoch's last batch to its end. Evaluation scores occlusion maps and can take longer
  than all of a short refinement, so leaving it out made the estimate run out a minute
  early. Until an epoch has been validated, the line says that evaluation comes on top.
Early stopping can only end a phase sooner.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

PHASES = {"unrefined": "Training the unrefined model", "oracle": "Training the oracle", "refine": "Refinement"}
STEPS = ("Data and unrefined model", "One good and one bad explanation", "Refinement", "Before and after")
STEP_OF = {"data": 0, "unrefined": 0, "oracle": 0, "warm": 0, "pick": 1, "pair": 1, "refine": 2, "evaluate": 3}  # event -> index in STEPS
ENDS = ("done", "early_stop", "cancelled", "failed")


@dataclass(frozen=True)
class Progress:
    text: str  # what the job does now: step, phase and epoch, elapsed time, time left
    fraction: float | None  # of the whole job, 0 to 1; None while no training phase is known
    seconds_left: float | None  # None until a batch has been timed


def run_attempt(events: list[dict], phase: str) -> list[dict]:
    """The events of the latest attempt at ``phase``: a restarted refinement starts a new curve."""
    mine = [e for e in events if e.get("phase") == phase]
    starts = [i for i, e in enumerate(mine) if e["type"] == "start"]
    if starts:
        return mine[starts[-1] :]
    attempt: list[dict] = []  # a history written by the CLI has no start events: a new epoch 1 starts one
    for e in mine:
        if e["type"] == "epoch_end" and attempt and e["epoch"] <= max((a["epoch"] for a in attempt if a["type"] == "epoch_end"), default=0):
            attempt = []
        attempt.append(e)
    return attempt


def phase_epochs_done(events: list[dict], phase: str, planned: int) -> float:
    """Epochs completed in ``phase`` over all of its runs in this job: the ended runs in full, the current one in part."""
    mine = [e for e in events if e.get("phase") == phase]
    starts = [i for i, e in enumerate(mine) if e["type"] == "start"]
    if not starts:
        return epochs_done(mine, planned)
    ended = sum(mine[i]["epochs"] for i in starts[:-1])
    current = mine[starts[-1] :]
    return min(ended + epochs_done(current, current[0]["epochs"]), planned)


def plan(events: list[dict]) -> dict[str, int]:
    """The job's training phases and their epoch counts, in order: from its plan, else from its start events."""
    planned = next((e["phases"] for e in events if e["type"] == "plan"), None)
    return dict(planned) if planned is not None else {e["phase"]: e["epochs"] for e in events if e["type"] == "start"}


def epoch_seconds(attempt: list[dict]) -> float | None:
    """Median wall seconds per epoch of one phase; during its first epoch, extrapolated from the batches so far."""
    start = next((e for e in attempt if e["type"] == "start" and "t" in e), None)
    ends = [e["t"] for e in attempt if e["type"] == "epoch_end" and "t" in e]
    if start is not None and ends:
        marks = [start["t"], *ends]
        return statistics.median(b - a for a, b in zip(marks, marks[1:], strict=False))
    batch = next((e for e in reversed(attempt) if e["type"] == "batch_end" and "t" in e), None)
    if start is None or batch is None:
        return None
    return (batch["t"] - start["t"]) / (batch["batch"] / batch["batches"])


def epochs_done(attempt: list[dict], planned: int) -> float:
    """Epochs completed in one phase, with the current epoch's share of batches; a finished phase counts in full."""
    if any(e["type"] in ENDS for e in attempt):
        return float(planned)
    for e in reversed(attempt):
        if e["type"] == "batch_end":
            return min(e["epoch"] - 1 + e["batch"] / e["batches"], planned)
        if e["type"] == "epoch_end":
            return min(float(e["epoch"]), planned)
    return 0.0


def current_step(events: list[dict]) -> int | None:
    """Which of ``STEPS`` the job works on now (None before its first event)."""
    for e in reversed(events):
        key = e.get("step") if e["type"] == "step" else e.get("phase")
        if key in STEP_OF:
            return STEP_OF[key]
    return None


def validation_seconds(events: list[dict]) -> float | None:
    """Median seconds of one validation pass: from an epoch's last batch to its end (forward passes only)."""
    gaps, last_batch = [], None
    for e in events:
        if e["type"] == "batch_end" and "t" in e:
            last_batch = e["t"]
        elif e["type"] == "epoch_end" and "t" in e and last_batch is not None:
            gaps.append(e["t"] - last_batch)
            last_batch = None
    return statistics.median(gaps) if gaps else None


def steps_left(events: list[dict], now: float, per_pass: float) -> float:
    """Seconds still to go in the plan's steps after training: a step not begun counts in full, the one
    running now less its time so far, and one that a later event followed not at all."""
    after = next((e.get("after", {}) for e in events if e["type"] == "plan"), {})
    begun = {e["step"]: i for i, e in enumerate(events) if e["type"] == "step"}
    left = 0.0
    for step, passes in after.items():
        cost = passes * per_pass
        if step not in begun:
            left += cost
        elif all(e["type"] == "step" and e["step"] not in after for e in events[begun[step] + 1 :]):
            left += max(0.0, cost - (now - events[begun[step]].get("t", now)))
    return left


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``1 h 02 min``: short enough for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _activity(events: list[dict], phases: dict[str, int]) -> str:
    for e in reversed(events):
        label = PHASES.get(e.get("phase", ""), "")
        if e["type"] == "batch_end":
            epochs = next((s["epochs"] for s in reversed(events) if s["type"] == "start" and s.get("phase") == e["phase"]), None)
            return f"{label}: epoch {e['epoch']} of {epochs or phases.get(e['phase'], e['epoch'])}, batch {e['batch']} of {e['batches']}"
        if e["type"] == "epoch_end":
            return f"{label}: epoch {e['epoch']} of {e['epochs']} done"
        if e["type"] == "start":
            return f"{label}: starting"
        if e["type"] == "step":
            return e["message"].rstrip("…")
    return "Starting"


AFTER = {"warm": "GradCAM for Explore", "pick": "the pick", "evaluate": "evaluation"}  # the steps a plan may time


def _after_words(events: list[dict]) -> str:
    after = next((e.get("after", {}) for e in events if e["type"] == "plan"), {})
    return " and ".join(AFTER.get(step, step) for step in after)


def job_progress(events: list[dict], started: float, now: float) -> Progress:
    """The progress line and bar of a running job, over all of its phases."""
    phases = plan(events)
    measured = {p: epoch_seconds(run_attempt(events, p)) for p in phases}
    fallback = next((s for s in reversed(measured.values()) if s is not None), None)  # an untimed phase: as the last timed one
    done = left = 0.0
    for phase, n in phases.items():
        d = phase_epochs_done(events, phase, n)
        done += d
        per_epoch = measured[phase] if measured[phase] is not None else fallback
        left = None if left is None or per_epoch is None else left + (n - d) * per_epoch
    total = sum(phases.values())
    fraction = min(done / total, 1.0) if total else None
    per_pass = validation_seconds(events)
    pending = any(e["type"] == "plan" and e.get("after") for e in events)
    if left is not None and per_pass is not None:
        left += steps_left(events, now, per_pass)
    text = _activity(events, phases)
    step = current_step(events)
    if any(e["type"] == "plan" for e in events) and step is not None:
        text = f"Step {step + 1} of {len(STEPS)} · {text}"
    text += f" · {duration(now - started)} elapsed"
    if left is None and fraction is not None and fraction < 1:
        text += " · time left: known after the first batch"
    elif left is not None and (fraction is not None and fraction < 1 or pending):
        text += f" · about {duration(left)} left" + (f" in training, then {_after_words(events)}" if pending and per_pass is None else "")
    return Progress(text, fraction, left)


def step_states(has: list[bool], running_step: int | None) -> list[str]:
    """ "done", "running" or "not yet" per step: true while a job is rewriting the files behind them.

    Checkpoints are written at every new best epoch, so a file's presence alone would call
    a step done from the first epoch on.
    """
    if running_step is None:
        return ["done" if h else "not yet" for h in has]
    return ["done" if i < running_step else "running" if i == running_step else "not yet" for i in range(len(has))]
