"""Which run the user is working on, and the good/bad pair they marked: per browser session.

The current run survives a page reload: with nothing chosen in this session, it is the
run a background job is working on, or else the newest run on disk. So a teacher who
reopens the tab finds the class's run where it was.
"""

from __future__ import annotations

import streamlit as st

from exbl_core import pipeline, runs
from studio import cache
from studio.jobs import get_runner

ROLES = ("good", "bad")


def current_run() -> runs.Run | None:
    """The run this session works on, or None when there is none yet."""
    chosen = st.session_state.get("run_path")
    job = get_runner().job
    for path in (chosen, job.run_path if job is not None and job.running else None):
        if path:
            try:
                return runs.open_run(path)
            except runs.RunError:
                continue
    found = runs.list_runs(cache.runs_dir())
    return found[0] if found else None


def select_run(run: runs.Run) -> None:
    st.session_state["run_path"] = str(run.path)


def pair(run: runs.Run) -> dict[str, int | None]:
    """The marked pair for this run: starts from the saved exemplars.json when there is one."""
    picks = st.session_state.setdefault("picks", {})
    key = str(run.path)
    if key not in picks:
        saved = runs.read_json(run.file(runs.EXEMPLARS)) if run.has(runs.EXEMPLARS) else {}
        picks[key] = {role: saved[role]["index"] if role in saved else None for role in ROLES}
    return picks[key]


def mark(run: runs.Run, role: str, index: int) -> str | None:
    """Mark ``index`` as the good or bad example, or unmark it if it already is.

    Returns the reason when the mark is refused: one image cannot be both good and bad.
    """
    p = pair(run)
    other = "bad" if role == "good" else "good"
    if p[role] == index:
        p[role] = None
        return None
    if p[other] == index:
        return f"Image #{index} is already marked {other}: one image cannot be both. Unmark it first, or pick another image as {role}."
    p[role] = index
    return None


def set_pair(run: runs.Run, good: int, bad: int) -> None:
    pair(run).update(good=good, bad=bad)


def forget_pair(run: runs.Run) -> None:
    """Drop the marks after retraining: they described the old model's explanations."""
    st.session_state.setdefault("picks", {}).pop(str(run.path), None)


def current_metrics(run: runs.Run) -> dict | None:
    """metrics.json when it describes every model of the run; None when missing, older than one, or incomplete.

    A refinement rewrites its checkpoint at every new best epoch and evaluates only when
    it ends, so after a cancel the metrics describe an older model and no view may show them.
    """
    if not (run.has(runs.METRICS) and run.refined()):
        return None
    names = pipeline.models_in(run)
    if run.file(runs.METRICS).stat().st_mtime < max(run.file(pipeline.model_file(m)).stat().st_mtime for m in names):
        return None
    metrics = runs.read_json(run.file(runs.METRICS))
    return metrics if all(m in metrics.get("models", {}) for m in names) else None


def saved_pair(run: runs.Run) -> tuple[int, int, float] | None:
    """``(good, bad, time)`` of the pair the latest refinement started with (exemplars.json), or None."""
    if not run.has(runs.EXEMPLARS):
        return None
    saved = runs.read_json(run.file(runs.EXEMPLARS))
    return saved["good"]["index"], saved["bad"]["index"], run.file(runs.EXEMPLARS).stat().st_mtime
