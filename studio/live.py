"""The live view of a background job: status line, progress bar, Cancel and the curves.

Both views here are ``st.fragment``s that rerun themselves every second while a job
runs, so only they redraw, not the page; when the job ends they rerun the whole page
once, so that the page shows what the job produced and unlocks its Start button. No
message about a job is drawn outside them: it would stay on screen after the job ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import streamlit as st

from exbl_core import runs
from studio import pages, progress, views
from studio.jobs import Job, Work, get_runner

POLL_SECONDS = 1.0
JOB_PAGES = {"train": pages.DATA, "refine": pages.REFINE, "evaluate": pages.COMPARE, "oracle": pages.COMPARE, "demo": pages.HOME}
JOB_NAMES = {"train": "training", "refine": "refinement", "evaluate": "evaluation", "oracle": "oracle training", "demo": "demo"}
LOCKED = "Only one job runs at a time, so Start comes back when it has finished."


def running_job() -> Job | None:
    """The job running now, on any run: one at a time per server, so pages lock their Start buttons meanwhile."""
    job = get_runner().job
    return job if job is not None and job.running else None


def refused() -> bool:
    """True, with a brief message, when a job runs already: another session started one since this page drew.

    A toast rather than a warning: a warning would stay on the page after the job ended.
    """
    other = running_job()
    if other is not None:
        st.toast(
            f"Another job is already running ({JOB_NAMES[other.kind]} on run '{Path(other.run_path).name}'), "
            "so this one did not start. Only one job runs at a time."
        )
    return other is not None


def start(kind: str, run: runs.Run, work: Work) -> None:
    """Start a job and redraw the page, or say briefly why not (another session started one first)."""
    try:
        job = get_runner().start(kind, str(run.path), work)
    except ValueError as exc:  # $EXBL_THREADS: the page says what to fix, and nothing starts
        st.error(str(exc))
        return
    if job is None:
        refused()
        return
    st.session_state["watching"] = job.started
    st.rerun()  # redraw the page in its running state: no Start button, live panel polling


def job_on(run: runs.Run) -> Job | None:
    """The running job working on ``run``, if any: pages hide their Start buttons meanwhile."""
    job = running_job()
    return job if job is not None and job.run_path == str(run.path) else None


def other_job_note(run: runs.Run | None, kinds: tuple[str, ...], then: str = LOCKED) -> bool:
    """Say which job runs, with Cancel and a link to watch it, when this page's panel does not show it.

    ``kinds`` are the jobs this page's panel shows for ``run``; ``then`` says what the job
    means for this page. Returns True while any job runs, so that the page can lock its
    settings and Start button; the note reruns the page when the job ends, so the lock and
    the note never outlive it.
    """
    job = running_job()
    if job is None:
        return False
    here = run is not None and job.run_path == str(run.path)
    if here and job.kind in kinds:
        return True

    @st.fragment(run_every=POLL_SECONDS)
    def note() -> None:
        now = get_runner().job
        if now is not job or not job.running:
            st.rerun()
        where = "this run" if here else f"run '{Path(job.run_path).name}'"
        st.info(
            f"A {JOB_NAMES[job.kind]} job is running on {where}: {progress.job_progress(job.events, job.started, time.time()).text}. {then}"
        )
        with st.container(horizontal=True):
            st.page_link(JOB_PAGES[job.kind], label=f"Watch the {JOB_NAMES[job.kind]}", icon=":material/visibility:")
            st.button("Cancel it", key="cancel-other", icon=":material/stop:", disabled=job.cancel.is_set(), on_click=get_runner().cancel)

    note()
    return True


def _outcome(job: Job) -> None:
    took = progress.duration((job.finished or time.time()) - job.started)
    if job.status == "done":
        st.success(f"The {JOB_NAMES[job.kind]} finished in {took}.")
    elif job.status == "cancelled":
        st.warning(f"The {JOB_NAMES[job.kind]} was cancelled after {took}. {_kept(job.events)}")
    elif job.status == "failed":
        st.error(f"The {JOB_NAMES[job.kind]} failed after {took}: {job.error}")


def _kept(events: list[dict]) -> str:
    """What a cancelled or failed job kept, in plain words, from the ``kept`` its training step recorded.

    Staged models (a refinement, the oracle, a retrained run) never replace a finished one,
    so when no epoch had finished the results from before are exactly as they were.
    """
    end = next((e for e in reversed(events) if e["type"] in ("cancelled", "failed") and "kept" in e), None)
    if end is None:
        return "No epoch was running, so nothing of it was kept, and the results from before are unchanged."
    kept, what = end["kept"], progress.PHASES.get(end.get("phase", ""), "training").lower()
    if not kept["epoch"]:
        return f"No epoch of the {what} had finished, so nothing of it was kept: the results from before are unchanged."
    if kept["model_unchanged"]:
        return (
            f"Epoch {kept['epoch']}, its best, was kept aside in {kept['file']}; "
            "the finished model and the results from before are unchanged."
        )
    return f"Epoch {kept['epoch']}, its best, was kept as {kept['model']}."


def _latest_phase(events: list[dict]) -> str | None:
    return next((e["phase"] for e in reversed(events) if e.get("phase") in progress.PHASES), None)


def job_panel(
    run: runs.Run,
    kinds: tuple[str, ...],
    phase: str | None = None,
    after: Literal["curves", "outcome", "nothing"] = "curves",
    describe: Callable[[Job], str] | None = None,
) -> None:
    """Progress and curves for ``run``: live while a job of ``kinds`` runs on it, else the latest results.

    ``phase`` picks the curves ("unrefined" or "refine"); None follows whatever phase the
    job runs now, and shows nothing when no job of ``kinds`` has run on ``run``. ``after``
    says what stays once no job runs: "curves" (and how the last job ended), "outcome" (only
    how it ended: Home, which shows the result instead) or "nothing" (a page whose inputs
    changed since the last job, like Refine with a new pair, must not show that job's curves
    as if they were its own; only the session that watched the job end is told how it ended).
    A job that ended before its first epoch finished leaves no curves: its part of an epoch
    would sit above the results from before as if it had made them.
    ``describe`` turns a running job into a caption above its progress (say, which pair it
    refines with), drawn in the panel so that it follows the job's events.
    """
    runner = get_runner()

    def mine(job: Job | None) -> bool:
        return job is not None and job.run_path == str(run.path) and job.kind in kinds

    job = runner.job
    every = POLL_SECONDS if mine(job) and job.running else None

    @st.fragment(run_every=every)
    def panel() -> None:
        job = runner.job
        running = mine(job) and job.running
        if running:
            st.session_state["watching"] = job.started
            if describe is not None:
                st.caption(describe(job))
            if job.cancel.is_set():
                st.progress(0.0, text="Cancelling: stops after the current batch; a finished model is never replaced…")
            else:
                now = progress.job_progress(job.events, job.started, time.time())
                st.progress(now.fraction or 0.0, text=now.text)
            st.button(
                "Cancel", key=f"cancel-{'-'.join(kinds)}", icon=":material/stop:", disabled=job.cancel.is_set(), on_click=runner.cancel
            )
        elif mine(job) and st.session_state.get("watching") == job.started:
            del st.session_state["watching"]
            st.session_state["watched"] = job.started
            st.rerun()
        if not running and after != "curves":
            if mine(job) and (after == "outcome" or st.session_state.get("watched") == job.started):
                _outcome(job)
            return
        events = list(job.events) if mine(job) else run.history() if phase else []
        shown = phase or _latest_phase(events)
        attempt = progress.run_attempt(events, shown) if shown else []
        if any(e["type"] in (("batch_end", "epoch_end") if running else ("epoch_end",)) for e in attempt):
            st.plotly_chart(views.curves(attempt), key=f"curves-{shown}")
        elif running:
            st.caption("The chart appears after the first batch.")
        if mine(job) and not job.running:
            _outcome(job)

    panel()
