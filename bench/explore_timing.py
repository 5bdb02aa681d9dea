"""Explore with occlusion in a real browser, on the shipped example as a class first sees it.

A fresh ``streamlit run app.py`` with an empty runs location opens the shipped example by
itself (``studio/example.py``). Playwright then opens Explore (GradCAM, the default), switches
"Explain with" to Occlusion and times, for a page of 12 training images each:

- the first page with occlusion (nothing computed yet for it),
- the second page (prefetched while the first was shown),
- the first page again (cached),
- back to GradCAM (cached since the first view).

The 24 images of the first two pages are the issue's "page of 24". The app's pages run torch
on half the cores (``studio/threads.py``). Needs Debian's chromium at /usr/bin/chromium.

    python -m bench.explore_timing
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from bench.browser import CHROMIUM, CHROMIUM_ARGS, app_server

PER_PAGE = 12


def timed(label: str, action, done) -> float:
    """Seconds from ``action()`` until ``done()`` returns, printed with ``label``."""
    t = time.perf_counter()
    action()
    done()
    seconds = time.perf_counter() - t
    print(f"{label}: {seconds:.2f} s", flush=True)
    return seconds


def main() -> None:
    runs_dir = Path(tempfile.mkdtemp(prefix="exbl-explore-timing-")) / "runs"  # absent: the app opens the example
    print(f"load average before: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with app_server(runs_dir, runs_dir.parent / "explore-timing.log") as (url, _, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        main = page.get_by_test_id("stMain")
        sidebar = page.get_by_test_id("stSidebar")
        zoom_buttons = main.get_by_role("button", name="Zoom")
        occlusion_captions = main.get_by_text("on lungs")
        first_caption = main.get_by_test_id("stImageCaption").first

        def idle() -> None:
            page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=120000)

        def occlusion_page(before: str | None = None) -> None:
            """Twelve occlusion captions; with ``before``, on a page whose first caption is another."""
            if before is not None:
                expect(first_caption).not_to_have_text(before, timeout=120000)
            expect(occlusion_captions).to_have_count(PER_PAGE, timeout=120000)
            idle()

        def gradcam_page() -> None:
            expect(zoom_buttons).to_have_count(PER_PAGE, timeout=120000)
            expect(occlusion_captions).to_have_count(0, timeout=120000)
            idle()

        timed("Explore with GradCAM, first view after the example opened", lambda: page.goto(url + "/Explore"), gradcam_page)
        pages = main.get_by_test_id("stPagination")

        def click(testid: str):
            return lambda: pages.get_by_test_id(testid).click()

        def choose(label: str):
            return lambda: sidebar.get_by_text(label, exact=True).click()

        first = timed("Occlusion, page 1 (12 images, nothing computed)", choose("Occlusion"), occlusion_page)
        page_1 = first_caption.inner_text()
        second = timed("Occlusion, page 2 (prefetched while page 1 was shown)", click("stPaginationNext"), lambda: occlusion_page(page_1))
        page_2 = first_caption.inner_text()
        timed("Occlusion, page 1 again (cached)", click("stPaginationPrev"), lambda: occlusion_page(page_2))
        timed("GradCAM again (cached)", choose("GradCAM"), gradcam_page)
        print(f"the first 24 images with occlusion: {first + second:.2f} s")
        browser.close()
    print(f"load average after: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
