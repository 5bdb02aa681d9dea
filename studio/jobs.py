"""The one background worker of the process: a thread that trains while pages keep answering.

Training takes minutes, and a Streamlit script run must finish in well under a second
for the UI to stay responsive. So training runs in a thread owned by a process-wide
``JobRunner`` (one per server, shared by every browser tab via ``st.cache_resource``).
The thread publishes plain event dicts into a list that page fragments poll. Only one
job runs at a time: two trainings on 2 CPU cores would each run at half speed, and two
jobs writing the same run folder would mix their checkpoints.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NotRequired, TypedDict

import streamlit as st

from exbl_core import runs
from exbl_core.events import Event
from studio import threads


class Plan(TypedDict):
    """A job's plan, first: the epochs of each training phase and the work after them, in
    validation passes (``studio.progress`` turns both into the time left)."""

    type: Literal["plan"]
    phases: dict[str, int]
    after: dict[str, float]


class Step(TypedDict):
    """A step of a job that is not an epoch (data, pick, evaluation), with its one-line message."""

    type: Literal["step"]
    step: str
    message: str
    good: NotRequired[int]  # the pair a "pair" step saved
    bad: NotRequired[int]


JobEvent = Event | Plan | Step  # what a job's work emits; the job adds ``t``, the arrival time
Emit = Callable[[JobEvent], None]
Work = Callable[[Emit, threading.Event], str]


@dataclass
class Job:
    """One background job. ``events`` only grows, so readers may take a snapshot without a lock.

    Each event carries ``t``, the time it arrived: the progress line measures seconds
    per epoch from it, and training events do not carry wall-clock times themselves.
    """

    kind: str  # "train", "refine", "evaluate" or "demo": what the status line says
    run_path: str
    cancel: threading.Event = field(default_factory=threading.Event)
    events: list[dict] = field(default_factory=list)
    status: str = "running"  # then "done", "cancelled" or "failed"
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"


class JobRunner:
    """Starts at most one job at a time and keeps the latest one for pages to read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.job: Job | None = None

    def start(self, kind: str, run_path: str, work: Work) -> Job | None:
        """Run ``work(emit, cancel)`` in a new thread; None when another job is still running,
        ValueError when ``$EXBL_THREADS`` is not a thread count (``studio.threads.for_job``).

        ``work`` returns the final status ("done" or "cancelled"); an exception marks the
        job "failed" with its message, so a page can show it instead of a traceback.
        """
        count = threads.for_job()  # a bad $EXBL_THREADS is refused here, before any job exists
        with self._lock:
            if self.job is not None and self.job.running:
                return None
            job = Job(kind=kind, run_path=run_path)
            self.job = job
        ready = threading.Event()
        threading.Thread(target=self._run, args=(job, work, count, ready), name=f"exbl-{kind}", daemon=True).start()
        ready.wait()
        threads.use(threads.for_pages())  # the job's count became the default for new threads: put the pages' back
        return job

    @staticmethod
    def _run(job: Job, work: Work, count: int, ready: threading.Event) -> None:
        threads.use(count)
        ready.set()
        try:
            # The run folder's lock, as the command line takes it: a CLI step on the same run
            # refuses while this job runs, and this job refuses while one is running there.
            with runs.locked(job.run_path):
                status = work(lambda event: job.events.append({**event, "t": time.time()}), job.cancel)
        except Exception as exc:  # the page shows the message; the log keeps the traceback
            traceback.print_exc()
            job.error = str(exc) or type(exc).__name__
            status = "failed"
        job.finished = time.time()
        job.status = status

    def cancel(self) -> bool:
        """Ask the running job to stop at its next batch; False when nothing is running."""
        job = self.job
        if job is None or not job.running:
            return False
        job.cancel.set()
        return True

    def wait(self, timeout: float) -> bool:
        """Block until the current job has finished (for tests and the CLI-like demo)."""
        deadline = time.monotonic() + timeout
        while self.job is not None and self.job.running:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


@st.cache_resource
def get_runner() -> JobRunner:
    """The process-wide runner: every session and page sees the same job."""
    return JobRunner()
