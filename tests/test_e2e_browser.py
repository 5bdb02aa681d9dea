"""The whole workflow in a real browser: Debian's chromium, driven by Playwright.

Starts ``streamlit run app.py`` on a free localhost port with an empty runs folder and
clicks through it on the Quick settings: create the data, train, mark a good and a bad
explanation, refine until the live chart has points, then compare and read the verdict.
A screenshot of every page goes to test-artifacts/ for a person to look at. Every request
the browser makes is recorded, and the test fails on any that leaves the machine: the
app must work offline and keep medical images private.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from bench.browser import CHROMIUM_ARGS, app_server

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
TRAINING_TIMEOUT_MS = 240_000  # Quick settings on a busy 2-core machine
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"),
]


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    """A fresh app server on localhost with its own runs folder; stopped after the test."""
    (tmp_path / "runs").mkdir()  # an empty runs folder: the example is offered, not opened at once as on a first start
    with app_server(tmp_path / "runs", tmp_path / "streamlit.log") as (url, _, _):  # RuntimeError with its log if it fails
        yield url


def test_whole_workflow_in_chromium(app_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_navigation_timeout(90_000)  # the first page of a fresh server imports torch: slow on a busy machine
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        main = page.get_by_test_id("stMain")

        def shot(name: str) -> None:
            page.wait_for_timeout(500)  # let images and charts finish drawing
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))  # Streamlit scrolls inside the page: a tall viewport shows more

        try:
            page.goto(app_url)
            expect(main.get_by_text("No run yet")).to_be_visible(timeout=60_000)
            # The server's first session: the menu is the app's five pages, with no entry for app.py itself.
            menu = page.get_by_test_id("stSidebarNav").get_by_role("link")
            expect(menu).to_have_text(["Home", "Data and model", "Explore", "Refine", "Compare"])
            shot("1-home-empty")

            main.get_by_role("link", name="Data and model").click()
            page.get_by_text("Quick (tiny, under a minute)").click()
            main.get_by_role("button", name="Create the run").click()
            expect(main.get_by_text("Training samples.")).to_be_visible(timeout=60_000)
            main.get_by_role("button", name="Train the unrefined model").click()
            next_link = main.get_by_role("link", name="Next: explore its explanations and mark a good and a bad one")
            expect(next_link).to_be_visible(timeout=TRAINING_TIMEOUT_MS)
            shot("2-data-and-model")

            next_link.click()
            main.get_by_role("button", name="Good").nth(0).click()
            expect(main.get_by_text("good: #")).to_be_visible(timeout=30_000)
            main.get_by_role("button", name="Bad").nth(1).click()
            refine_link = main.get_by_role("link", name="Next: refine with this pair")
            expect(refine_link).to_be_visible(timeout=30_000)
            shot("3-explore-marked")  # the marked buttons take their frame's colour
            main.get_by_role("button", name="Zoom").nth(4).click()  # a lower tile: the zoom opens over it, in view
            expect(page.get_by_role("dialog").get_by_text("Overlay opacity")).to_be_visible(timeout=30_000)
            shot("3-explore-zoom")
            page.keyboard.press("Escape")

            refine_link.click()
            expect(main.get_by_text("No refinement yet")).to_be_visible(timeout=30_000)
            expect(main.locator(".js-plotly-plot")).to_have_count(0)  # no curves before Start
            main.get_by_role("button", name="Start refinement").click()
            expect(main.locator(".js-plotly-plot .scatterlayer .trace").first).to_be_attached(timeout=TRAINING_TIMEOUT_MS)
            shot("4-refine-live")
            compare_link = main.get_by_role("link", name="Next: compare before and after")
            expect(compare_link).to_be_visible(timeout=TRAINING_TIMEOUT_MS)
            shot("5-refine-done")

            compare_link.click()
            expect(main.get_by_role("heading", name="Table 1")).to_be_visible(timeout=60_000)
            expect(main.get_by_text(re.compile(r"^(shortcut still used|shortcut reduced|nothing to unlearn)$"))).to_be_visible()
            expect(main.get_by_text("the full verdict needs the oracle")).to_be_visible()
            expect(main.get_by_role("button", name="Table 1 (CSV)")).to_be_visible()
            shot("6-compare")

            page.get_by_test_id("stSidebarNav").get_by_role("link", name="Explore").click()
            # Read the captions only once Explore has replaced Compare: reading earlier can catch
            # the previous page's images, and the test then marks one image and looks for another.
            expect(main.get_by_role("heading", name="Explore")).to_be_visible(timeout=30_000)
            expect(main.get_by_text("Your pair")).to_be_visible(timeout=30_000)
            expect(main.get_by_role("button", name="Good").nth(2)).to_be_visible(timeout=30_000)
            third = re.match(r"#(\d+)", main.get_by_test_id("stImageCaption").nth(2).inner_text())[1]
            main.get_by_role("button", name="Good").nth(2).click()  # a new pair: Refine must not show the old curves
            expect(main.get_by_text(re.compile(rf"good: #{third}\b"))).to_be_visible(timeout=30_000)
            main.get_by_role("link", name="Next: refine with this pair").click()
            expect(main.get_by_text("No refinement with this pair yet")).to_be_visible(timeout=30_000)
            expect(main.locator(".js-plotly-plot")).to_have_count(0)
            shot("7-refine-new-pair")

            page.goto(app_url)
            expect(main.get_by_text("Before and after: done")).to_be_visible(timeout=30_000)
            expect(main.get_by_role("heading", name="Result")).to_be_visible()
            shot("8-home-done")
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"))  # what the page showed when a step timed out
            raise
        finally:
            browser.close()
    remote = sorted(
        {url for url in requests if urlparse(url).scheme in ("http", "https", "ws", "wss") and urlparse(url).hostname not in LOCAL_HOSTS}
    )
    assert not remote, f"the page requested URLs outside this machine: {remote}"
