"""The shipped example in the app: opened at once on a first start, offered with an empty runs folder.

A tiny example (32 px) built once stands in for ``assets/``; the app's runs folder is a
temporary one. A first start is a runs folder that does not exist yet, as in a fresh clone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from exbl_core import run_models, runs
from studio import example, pages
from studio.cache import RUNS_DIR_ENV
from studio.jobs import get_runner

APP = Path(__file__).resolve().parents[1] / "app.py"


def app_with_runs_in(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(RUNS_DIR_ENV, str(folder))
    return folder


@pytest.fixture(autouse=True)
def no_job_left() -> None:
    yield
    get_runner().cancel()
    assert get_runner().wait(60)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    return at.switch_page(page).run() if page != "app.py" else at


def test_first_start_opens_the_example_at_once_and_explore_shows_its_explanations(
    shipped_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = digest(shipped_example)
    folder = app_with_runs_in(tmp_path / "runs", monkeypatch)  # not there yet: a first start
    at = open_page("app.py")
    assert not at.exception
    said = [str(s.value) for s in at.success]
    assert len(said) == 1 and said[0].startswith("Opened the shipped example") and "nothing was trained" in said[0]
    (run,) = runs.list_runs(folder)
    assert run.name.startswith("example-") and run.has(runs.UNREFINED) and run.has(runs.ORACLE)
    assert run_models.load_model(run, "oracle") is not None  # the run's identity checks pass
    explore = at.switch_page(pages.EXPLORE).run()
    assert not explore.exception
    assert len(explore.image) >= 1 and all(i.proto.imgs[0].caption.startswith("#") for i in explore.image)
    assert digest(shipped_example) == before  # the assets were only read


def test_an_empty_runs_folder_offers_the_example_on_home_and_explore(
    shipped_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = app_with_runs_in(tmp_path, monkeypatch)  # exists: not a first start, so nothing opens by itself
    for page in ("app.py", pages.EXPLORE):
        at = open_page(page)
        assert not at.exception
        assert example.OPEN_LABEL in [b.label for b in at.button]
        assert not runs.list_runs(folder)
        if page == "app.py":  # Home's one sentence points at the offer, not at a demo that trains for minutes
            assert any(m.value.startswith("**Click first:** *Open the shipped example*") for m in at.markdown)
    at.button(key="open-example").click().run()
    assert not at.exception
    (run,) = runs.list_runs(folder)
    assert run.has(runs.UNREFINED)
    assert any(str(s.value).startswith("Opened the shipped example") for s in at.success)


def test_a_broken_example_is_not_opened_and_the_page_says_to_train(
    shipped_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (shipped_example / "unrefined.pt").write_bytes(b"changed")
    folder = app_with_runs_in(tmp_path / "runs", monkeypatch)
    at = open_page("app.py")
    assert not at.exception
    warned = [str(w.value) for w in at.warning]
    assert len(warned) == 1 and "unrefined.pt" in warned[0] and "from scratch" in warned[0]
    assert not runs.list_runs(folder)
    assert "Run the demo" in [b.label for b in at.button]


@pytest.mark.slow
def test_run_the_demo_starts_from_the_example_unless_switched_off(
    shipped_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = app_with_runs_in(tmp_path, monkeypatch)
    for from_example in (True, False):
        at = open_page("app.py")
        switch = next(t for t in at.toggle if t.label.startswith("Start from the shipped model"))
        if not from_example:
            switch.set_value(False).run()
        next(b for b in at.button if b.label == "Run the demo").click().run()
        assert not at.exception
        assert get_runner().wait(120)
        run = runs.open_run(get_runner().job.run_path)
        events = run.history()
        trained = any(e.get("phase") == "unrefined" for e in events)
        assert trained is not from_example
        assert run.has(runs.ORACLE) is from_example and run.has(runs.METRICS)
    assert len(runs.list_runs(folder)) == 2
