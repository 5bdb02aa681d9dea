"""The live view of a background job: status line, progress bar, Cancel and the curves.

It is an ``st.fragment`` that reruns itself every second while a job runs, so only the
panel redraws, not the page; when the job ends it reruns the whole page once, so that
the page can show what the job produced.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from exbl_core import runs
from studio import pages, views
from studio.jobs import Job, Work, get_runner

POLL_SECONDS = 1.0
PHASES = {"unrefined": "Training the unrefined model", "refine": "eXBL refinement"}


def busy() -> bool:
    """True, with a polite message, when a job is running: one job at a time, process-wide."""
    job = get_runner().job
    if job is None or not job.running:
        return False
    st.warning(
        f"Another job is already running ({job.kind} on run '{Path(job.run_path).name}'). "
        "Only one training runs at a time: wait for it to finish, or cancel it on its page."
    )
    return True


def start(kind: str, run: runs.Run, work: Work) -> None:
    """Start a job and redraw the page, or say why not (another one started in the meantime)."""
    job = get_runner().start(kind, str(run.path), work)
    if job is None:
        busy()
        return
    st.session_state["watching"] = job.started
    st.rerun()  # redraw the page in its running state: no Start button, live panel polling


JOB_PAGES = {"train": pages.DATA, "refine": pages.REFINE, "evaluate": pages.COMPARE, "demo": pages.HOME}


def job_on(run: runs.Run) -> Job | None:
    """The running job working on ``run``, if any: pages hide their Start buttons meanwhile."""
    job = get_runner().job
    return job if job is not None and job.running and job.run_path == str(run.path) else None


def note_other_job(run: runs.Run, kinds: tuple[str, ...]) -> None:
    """Say so, with a link, when a job this page does not show (say, training) is busy with the run."""
    job = job_on(run)
    if job is not None and job.kind not in kinds:
        st.info(f"A {job.kind} job is running on this run; this page's Start button comes back when it has finished.")
        st.page_link(JOB_PAGES[job.kind], label=f"Watch the {job.kind} job", icon=":material/visibility:")


def _status_line(job: Job) -> tuple[str, float | None]:
    """What the job is doing now, and how far the current phase has come (0 to 1)."""
    if job.cancel.is_set():
        return "Cancelling: stops after the current batch and keeps the best checkpoint so far…", None
    epochs = next((e["epochs"] for e in reversed(job.events) if e["type"] == "start"), None)
    for e in reversed(job.events):
        label = PHASES.get(e.get("phase", ""), "")
        if e["type"] == "batch_end" and epochs:
            done = (e["epoch"] - 1 + e["batch"] / e["batches"]) / epochs
            return f"{label}: epoch {e['epoch']} of {epochs}, batch {e['batch']} of {e['batches']}", min(done, 1.0)
        if e["type"] == "epoch_end":
            return f"{label}: epoch {e['epoch']} of {e['epochs']} done, validating…", e["epoch"] / e["epochs"]
        if e["type"] == "start":
            return f"{label}: starting…", 0.0
        if e["type"] == "step":
            return e["message"], None
    return "Starting…", None


def _latest_phase(events: list[dict]) -> str | None:
    return next((e["phase"] for e in reversed(events) if e.get("phase") in PHASES), None)


def _outcome(job: Job) -> None:
    if job.status == "done":
        st.success(f"The {job.kind} job finished.")
    elif job.status == "cancelled":
        st.warning(f"The {job.kind} job was cancelled. The best checkpoint saved before that is kept.")
    elif job.status == "failed":
        st.error(f"The {job.kind} job failed: {job.error}")


def job_panel(run: runs.Run, kinds: tuple[str, ...], phase: str | None = None) -> None:
    """Progress and curves for ``run``: live while a job of ``kinds`` runs on it, else from its history.

    ``phase`` picks the curves ("unrefined" or "refine"); None follows whatever phase the
    job runs now, and shows nothing when no job of ``kinds`` has run on ``run``.
    """
    runner = get_runner()

    def mine(job: Job | None) -> bool:
        return job is not None and job.run_path == str(run.path) and job.kind in kinds

    job = runner.job
    every = POLL_SECONDS if mine(job) and job.running else None

    @st.fragment(run_every=every)
    def panel() -> None:
        job = runner.job
        if mine(job) and job.running:
            st.session_state["watching"] = job.started
            text, done = _status_line(job)
            st.progress(done if done is not None else 0.0, text=text)
            st.button(
                "Cancel", key=f"cancel-{'-'.join(kinds)}", icon=":material/stop:", disabled=job.cancel.is_set(), on_click=runner.cancel
            )
        elif mine(job) and st.session_state.get("watching") == job.started:
            del st.session_state["watching"]
            st.rerun()
        events = list(job.events) if mine(job) else run.history() if phase else []
        shown = phase or _latest_phase(events)
        attempt = views.run_attempt(events, shown) if shown else []
        if any(e["type"] in ("batch_end", "epoch_end") for e in attempt):
            st.plotly_chart(views.curves(attempt), key=f"curves-{shown}")
        elif mine(job) and job.running:
            st.caption("The chart appears after the first batch.")
        if mine(job) and not job.running:
            _outcome(job)

    panel()
