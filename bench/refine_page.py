"""One refinement on the Refine page, in a real browser, from the click on Start to the link to Compare.

Run with ``python -m bench.refine_page [--job-threads 1 2]`` (needs Debian's chromium at
/usr/bin/chromium). For each count, a fresh ``streamlit run app.py`` starts on an empty
temporary runs folder with ``$EXBL_THREADS`` set to it, so the first start opens the shipped
example; the pair comes from Explore's "Suggest a pair from occlusion", and the Refine page
runs its default method. Besides the refinement (pair step, training, evaluation, Figure 3),
it times page switches and Cancel during a second refinement, since those are what a job
with more threads could slow down. The counts run one after the other in one process, so
their figures can be compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from bench.browser import CHROMIUM, CHROMIUM_ARGS, PAST_FIRST_BATCH, app_server, page_switches


def one_server(browser, threads: int, folder: Path) -> dict[str, float | list[float]]:
    """Time a refinement, page switches during a second one and its Cancel, on a fresh server with ``threads`` job threads."""
    os.environ["EXBL_THREADS"] = str(threads)
    with app_server(folder / "runs", folder / "server.log", timeout=120) as (url, _, _):
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        main = page.get_by_test_id("stMain")
        page.goto(url + "/Explore")
        main.get_by_role("button", name="Suggest a pair from occlusion").click(timeout=120_000)
        refine_link = main.get_by_role("link", name="Next: refine with this pair")
        expect(refine_link).to_be_visible(timeout=120_000)
        refine_link.click()
        start = main.get_by_role("button", name="Start refinement")
        start.click(timeout=60_000)
        t = time.perf_counter()
        compare_link = main.get_by_role("link", name="Next: compare before and after")
        expect(compare_link).to_be_visible(timeout=600_000)
        refine_s = time.perf_counter() - t

        # A second refinement (again from the start), watched from other pages, then cancelled.
        main.get_by_role("button", name="Start refinement").click(timeout=60_000)
        expect(main.get_by_role("button", name="Cancel")).to_be_visible(timeout=60_000)
        expect(main.get_by_text(PAST_FIRST_BATCH)).to_be_visible(timeout=120_000)  # a poll may skip batch 2
        switches = page_switches(page)
        t = time.perf_counter()
        main.get_by_role("button", name="Cancel").click()
        expect(main.get_by_text("was cancelled").first).to_be_visible(timeout=60_000)
        cancel_s = time.perf_counter() - t
        page.close()
    return {"refine_s": refine_s, "switches": switches, "cancel_s": cancel_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job-threads", type=int, nargs="+", default=[1, os.cpu_count() or 1], help="$EXBL_THREADS values, in order")
    args = p.parse_args()
    results = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for threads in args.job_threads:
            folder = Path(tempfile.mkdtemp(prefix=f"exbl-refine-page-{threads}-"))
            results[threads] = r = one_server(browser, threads, folder)
            print(
                f"job threads {threads}: Start to the link to Compare {r['refine_s']:.1f} s; page switches during the next "
                f"refinement median {statistics.median(r['switches']):.2f} s, max {max(r['switches']):.2f} s; "
                f"Cancel to 'cancelled' {r['cancel_s']:.2f} s (server log {folder / 'server.log'})",
                flush=True,
            )
        browser.close()


if __name__ == "__main__":
    main()
