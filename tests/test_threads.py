"""Torch threads in the app: the background job gets every core, the pages half of them (studio.threads)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from studio import threads
from studio.jobs import JobRunner


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A 4-core machine without $EXBL_THREADS; the test thread's count is restored afterwards."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    yield
    threads.use(before)


def count_in_new_thread() -> int:
    """What a thread started now (a page's script run, a prefetch) gets on its first parallel operation."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def job_count(tmp_path: Path) -> int:
    seen: list[int] = []
    runner = JobRunner()
    runner.start("evaluate", str(tmp_path), lambda emit, cancel: seen.append(torch.get_num_threads()) or "done")
    assert runner.wait(30) and runner.job.status == "done", runner.job.error
    return seen[0]


def test_the_job_gets_every_core_and_threads_started_after_it_the_pages_half(four_cores, tmp_path: Path) -> None:
    threads.use(threads.for_pages())
    assert job_count(tmp_path) == 4
    assert count_in_new_thread() == 2  # the job's setting did not become the default of later page threads
    assert torch.get_num_threads() == 2


def test_exbl_threads_sets_the_jobs_count(four_cores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    assert job_count(tmp_path) == 1
    assert count_in_new_thread() == 2


def test_a_count_set_before_the_first_parallel_operation_survives_a_later_default() -> None:
    """``use`` reads torch's default into the thread first; plain ``set_num_threads`` there would be undone."""
    set_here, default_changed, seen = threading.Event(), threading.Event(), []

    def thread() -> None:
        threads.use(3)
        set_here.set()
        default_changed.wait(30)
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    worker = threading.Thread(target=thread)
    worker.start()
    set_here.wait(30)
    other = threading.Thread(target=lambda: threads.use(1))
    other.start()
    other.join()
    default_changed.set()
    worker.join()
    threads.use(before)
    assert seen == [3]


@pytest.mark.parametrize("value", ["0", "two", "-1", ""])
def test_a_bad_exbl_threads_is_refused_before_any_job_starts(value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(threads.THREADS_ENV, value)
    runner, ran = JobRunner(), threading.Event()
    with pytest.raises(ValueError, match=r"\$EXBL_THREADS must be a whole number"):
        runner.start("evaluate", str(tmp_path), lambda emit, cancel: ran.set() or "done")
    assert runner.job is None and not ran.is_set()
