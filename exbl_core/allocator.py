"""glibc's allocator, set to keep freed memory for the next training step instead of handing it back.

Every training step allocates the activations of its batch and frees them at its end.
glibc returns freed memory at the top of its heap to the kernel as soon as more than
128 KiB are free there, and maps larger blocks afresh: the next step then takes a page
fault on every page it touches again, and the kernel zeroes each one. A training step
at 128 px (batch 32, 2 threads) spent 0.04-0.06 s of its 0.30-0.32 s in the kernel that
way; with the settings here 0.005-0.018 s, and the step took 0.28-0.29 s
(bench/RESULTS.md, section 4). The cost is memory that stays with the process after a
peak, for the next step to reuse.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt's parameters (glibc's malloc.h) and the values set: blocks up to 32 MiB (the largest
# threshold glibc accepts) come from the heap; up to 2 GiB of free memory at its top is kept;
# the heap grows in steps of 256 MiB rather than a page at a time.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 256 * 2**20))


def keep_freed_memory() -> bool:
    """Apply ``SETTINGS`` to this process's allocator; True when glibc took every one.

    Elsewhere (macOS, Windows, a C library without ``mallopt``) nothing changes and False is returned.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
