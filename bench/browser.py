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
