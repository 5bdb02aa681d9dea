"""A fresh app server and Chromium's flags, for the benchmarks and tests that drive the app in a browser."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.common import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

PAST_FIRST_BATCH = re.compile(r"batch ([2-9]|\d\d+) of")
"""A job's progress line once its first batch is done: the live view polls once a second, so it may never show batch 2."""


@contextlib.contextmanager
def app_server(runs_dir: Path, log: Path, timeout: float = 60) -> Iterator[tuple[str, float, float]]:
    """A fresh ``streamlit run app.py`` on a free localhost port over ``runs_dir``: its URL, start time and seconds until healthy.

    Raises RuntimeError with the server's output when it exits or does not answer within ``timeout`` seconds.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EXBL_RUNS_DIR": str(runs_dir)}
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        srv = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://localhost:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2):
                    break
            except OSError:
                if time.perf_counter() - t0 > timeout or srv.poll() is not None:
                    raise RuntimeError("the app server did not start:\n" + log.read_text(errors="replace")) from None
                time.sleep(0.1)
        yield url, t0, time.perf_counter() - t0
    finally:
        srv.terminate()
        srv.wait(timeout=20)


def page_switches(page, rounds: int = 4) -> list[float]:
    """Seconds for each click from Refine to "Data and model" and back, ``rounds`` times, while a job runs.

    Each switch waits for a text of the new page, then 0.7 s as a person would, so that the
    live view's polls run between the clicks as they do in class.
    """
    from playwright.sync_api import expect

    main = page.get_by_test_id("stMain")
    times = []
    for _ in range(rounds):
        for name, marker in (("Data and model", "Unrefined model"), ("Refine", "Change the pair on Explore")):
            t = time.perf_counter()
            page.get_by_test_id("stSidebarNav").get_by_role("link", name=name).click()
            expect(main.get_by_text(marker).first).to_be_visible(timeout=30_000)
            times.append(time.perf_counter() - t)
            page.wait_for_timeout(700)
    return times
