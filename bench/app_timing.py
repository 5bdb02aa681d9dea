"""App timings in a real browser: first render, Explore on 200 images (cold and cached),
page switches while refinement runs, and Cancel.

Run with ``python -m bench.app_timing`` (needs Debian's chromium at /usr/bin/chromium).
It prepares a 128 px synthetic run with 200 training and 200 test images in a temporary
folder, trained outside the app (as by the CLI), so no server has it cached. Two fresh
``streamlit run app.py`` servers on free localhost ports are driven with Playwright: the
first gets Explore as its very first request (nothing cached, nothing prefetched; the
time includes loading the page), the second is used the usual way, home page first.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from playwright.sync_api import expect, sync_playwright

from bench.browser import CHROMIUM, CHROMIUM_ARGS, PAST_FIRST_BATCH, app_server, page_switches
from exbl_core import pipeline, run_data
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.synthetic import SyntheticConfig

ROOT = Path(__file__).resolve().parents[1]
tmp = Path(tempfile.mkdtemp(prefix="exbl-app-timing-"))
run = run_data.new_run(
    tmp / "runs" / "m200",
    SyntheticConfig(size=128, n_train=50, n_val=10, n_test=50),
    TrainConfig(epochs=1, lr=1e-3),
    RefineConfig(epochs=3),
)
pipeline.train_step(run, run_data.load_data(run), torch.device("cpu"))


@contextlib.contextmanager
def server(log: str):
    """A fresh app server over this benchmark's runs folder, its output in ``log`` beside them."""
    with app_server(tmp / "runs", tmp / log) as started:
        yield started


def grid_shown(main) -> None:
    expect(main.get_by_text("of 200 images")).to_be_visible(timeout=60000)
    expect(main.get_by_role("button", name="Zoom").nth(11)).to_be_visible(timeout=60000)


with sync_playwright() as pw:
    b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    # 1. Cold: a fresh server whose first request is Explore itself, so nothing is cached and
    # nothing was prefetched. The time includes loading the page's JavaScript.
    with server("server-cold.log") as (url, _, _):
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        t = time.perf_counter()
        page.goto(url + "/Explore")
        grid_shown(page.get_by_test_id("stMain"))
        print(f"Explore as the first page of a fresh server, training split 200 images, nothing cached: {time.perf_counter() - t:.2f}s")
        page.close()
    # 2. The usual path: home first (which starts prefetching the run's GradCAM), then Explore.
    with server("server.log") as (url, t0, t_health):
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        main = page.get_by_test_id("stMain")
        page.goto(url)
        expect(main.get_by_text("Current run")).to_be_visible(timeout=60000)
        t_first = time.perf_counter() - t0
        print(f"server healthy {t_health:.2f}s after start; home rendered {t_first:.2f}s after start (browser already open)")
        t = time.perf_counter()
        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Explore").click()
        grid_shown(main)
        print(f"Explore clicked as soon as home rendered (prefetch under way), training split 200 images: {time.perf_counter() - t:.2f}s")
        # Retrain in the app: the worker warms the caches after training.
        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Data and model").click()
        main.get_by_role("button", name="Train again (replaces the model and any refinement)").click()
        expect(main.get_by_role("button", name="Cancel")).to_be_visible(timeout=60000)
        expect(main.get_by_role("link", name="Next: explore its explanations and mark a good and a bad one")).to_be_visible(timeout=300000)
        t = time.perf_counter()
        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Explore").click()
        grid_shown(main)
        print(f"Explore, training split 200 images, after training in the app: {time.perf_counter() - t:.2f}s")
        t = time.perf_counter()
        page.get_by_text("Test images", exact=True).click()
        expect(main.get_by_text("Switch in the sidebar")).to_be_visible(timeout=60000)
        grid_shown(main)
        page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=60000)
        print(f"Explore, test split 200 images, after training in the app (switching splits): {time.perf_counter() - t:.2f}s")
        # warm: go away and come back
        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Refine").click()
        expect(main.get_by_text("No pair yet")).to_be_visible(timeout=60000)
        t = time.perf_counter()
        page.get_by_test_id("stSidebarNav").get_by_role("link", name="Explore").click()
        expect(main.get_by_role("button", name="Zoom").nth(11)).to_be_visible(timeout=60000)
        page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=60000)
        print(f"Explore, warm (cached): {time.perf_counter() - t:.2f}s")
        # start refinement, then click between pages while it runs
        page.get_by_text("Training images (pick the pair here)").click()
        main.get_by_role("button", name="Suggest a pair by AP").click()
        link = main.get_by_role("link", name="Next: refine with this pair")
        try:
            expect(link).to_be_visible(timeout=15000)
        except AssertionError:
            main.get_by_role("button", name="Good").nth(0).click()
            page.wait_for_timeout(1500)
            main.get_by_role("button", name="Bad").nth(1).click()
            expect(link).to_be_visible(timeout=15000)
        link.click()
        try:
            main.get_by_role("button", name="Start refinement").click()
        except Exception:
            page.screenshot(path=str(tmp / "fail.png"))
            raise
        expect(main.get_by_role("button", name="Cancel")).to_be_visible(timeout=60000)
        expect(main.get_by_text(PAST_FIRST_BATCH)).to_be_visible(timeout=120000)  # a poll may skip batch 2
        times = page_switches(page)
        print(
            "page switch during refinement: "
            + ", ".join(f"{x:.2f}" for x in times)
            + f" s; median {statistics.median(times):.2f}s, max {max(times):.2f}s"
        )
        t = time.perf_counter()
        main.get_by_role("button", name="Cancel").click()
        expect(main.get_by_text("Cancelling: stops")).to_be_visible(timeout=60000)
        print(f"Cancel click to 'Cancelling' feedback: {time.perf_counter() - t:.2f}s")
        expect(main.get_by_text("was cancelled")).to_be_visible(timeout=60000)
        print(f"Cancel click to 'cancelled' shown: {time.perf_counter() - t:.2f}s")
        page.screenshot(path=str(tmp / "cancelled.png"))
        b.close()
