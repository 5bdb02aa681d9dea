"""How many torch CPU threads the pages and the background job each use.

A job (training, refinement, evaluation) gets every core, and the pages get half of them.
With both at every core, a page's GradCAM during training oversubscribed 2 cores and a
training batch took anywhere from 0.3 to 10 s, so Cancel could not answer in time; with
both at half, one refinement on the Refine page took 104 s on 2 cores instead of 75 s
(``python -m bench.refine_page``), although the pages are idle for most of it. Torch keeps
the count per thread (OpenMP's setting is per thread), so the job's thread can have its own.
"""

from __future__ import annotations

import os

import torch

THREADS_ENV = "EXBL_THREADS"


def for_pages() -> int:
    """Half the cores, at least one."""
    return max(1, (os.cpu_count() or 2) // 2)


def for_job() -> int:
    """Every core, or ``$EXBL_THREADS``; ValueError naming the variable when it is not a whole number of 1 or more."""
    value = os.environ.get(THREADS_ENV)
    if value is None:
        return os.cpu_count() or 1
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"${THREADS_ENV} must be a whole number of torch threads, 1 or more (it is {value!r})")
    return int(value)


def use(count: int) -> None:
    """Give the calling thread ``count`` torch threads.

    Torch reads its process-wide default into a thread on that thread's first parallel
    operation; ``get_num_threads`` triggers that read now, or a later one would undo this.
    ``set_num_threads`` also makes ``count`` the default for threads that start later, so
    whoever sets a count for one thread restores the pages' afterwards (``studio.jobs``).
    """
    torch.get_num_threads()
    torch.set_num_threads(count)
