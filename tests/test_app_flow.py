# ruff: noqa: F811 - the fixtures come from tests/test_app_pages.py, and each test names them as parameters
"""A class's flow without dead ends: every page while a job runs, what a cancel kept, which pair each model came from.

AppTests on the tiny synthetic run of tests/test_app_pages.py. Cancels are made at a
chosen point of a real refinement (the first batch, or the first epoch's end), so the
messages are checked against what the pipeline really recorded.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from exbl_core import checkpoints, files, picking, run_data, run_models, runs
from exbl_core.model import build_model
from studio import tasks
from studio.jobs import get_runner
from tests.test_app_pages import (  # noqa: F401 - fixtures
    PAGES,
    blocking_job,
    finished_copy,
    finished_run,
    infos,
    open_page,
    runs_dir,
    texts,
)

EXPLORE, REFINE, COMPARE = PAGES["explore"], PAGES["refine"], PAGES["compare"]
SHORTCUT = "Shortcut test images (children in every class)"


def captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


def warnings(at: AppTest) -> str:
    return " ".join(str(w.value) for w in at.warning)


def refine_cancelled_at(run: runs.Run, event_type: str) -> None:
    """Refine the run as Start refinement does (same pair), cancelling at its first ``event_type`` event; wait for the end."""

    def work(emit, cancel: threading.Event) -> str:
        def relay(event: dict) -> None:
            emit(event)
            if event["type"] == event_type:
                cancel.set()

        data = run_data.load_data(run)
        return tasks.refine_work(run, data, torch.device("cpu"), 0, 1, {"epochs": 50, "patience": 50})(relay, cancel)

    get_runner().start("refine", str(run.path), work)
    assert get_runner().wait(120)
    assert get_runner().job.status == "cancelled", get_runner().job.error


@pytest.mark.slow
def test_a_cancel_before_the_first_epoch_says_nothing_was_kept_and_shows_the_results_from_before(
    runs_dir: Path, finished_run: Path
) -> None:
    run = finished_copy(finished_run, runs_dir)
    before = {name: run.file(name).read_bytes() for name in (runs.refined_file("exbl"), runs.METRICS)}
    refine_cancelled_at(run, "batch_end")
    at = open_page(REFINE)
    assert not at.exception
    assert "No epoch of the refinement had finished, so nothing of it was kept: the results from before are unchanged" in warnings(at)
    assert not at.get("plotly_chart"), "no part-epoch curve above the results from before"
    assert "Result" in [s.value for s in at.subheader]
    assert {name: run.file(name).read_bytes() for name in before} == before
    compare = open_page(COMPARE)
    assert "nothing of it was kept" in warnings(compare) and "Verdicts" in [s.value for s in compare.subheader]


def test_a_cancel_after_an_epoch_says_which_epoch_was_kept(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    refine_cancelled_at(run, "epoch_end")
    at = open_page(REFINE)
    assert not at.exception
    partial = runs.partial_file(runs.refined_file("exbl"))
    assert f"Epoch 1, its best, was kept aside in {partial}; the finished model and the results from before are unchanged" in warnings(at)
    assert run.has(partial)
    assert len(at.get("plotly_chart")) == 1, "the cancelled attempt's finished epoch is shown"


def job_events() -> tuple[dict, ...]:
    return (
        {"type": "plan", "phases": {"refine": 3}, "after": {"evaluate": 2.0}},
        {"type": "start", "phase": "refine", "epochs": 3},
        {"type": "batch_end", "phase": "refine", "epoch": 1, "batch": 1, "batches": 2, "loss": 1.0},
    )


@pytest.mark.slow
def test_compare_keeps_the_last_finished_results_while_a_job_runs_and_says_so(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    release = blocking_job("refine", str(run.path), job_events())
    try:
        at = open_page(COMPARE)
        assert not at.exception
        text = at.get("progress")[0].proto.text
        assert "Refinement: epoch 1 of 3" in text and "left" in text
        assert "Meanwhile, the last finished results" in infos(at)
        assert {"Verdicts", "Table 1"} <= {s.value for s in at.subheader} and len(at.image) == 1
    finally:
        release.set()


def test_explore_shows_a_running_jobs_phase_and_time_left(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    release = blocking_job("refine", str(run.path), job_events())
    try:
        at = open_page(EXPLORE)
        assert not at.exception
        assert "A refinement job is running on this run" in infos(at) and "epoch 1 of 3" in infos(at) and "left" in infos(at)
    finally:
        release.set()


def save_refined(run: runs.Run, method: str, pair: dict | None) -> None:
    """The run's eXBL weights saved as ``method``'s model, recording ``pair`` (None: a model from before pairs were recorded)."""
    model = build_model(num_classes=4)
    meta = checkpoints.load_checkpoint(run.file(runs.refined_file("exbl")), model)
    meta = {k: v for k, v in meta.items() if k != "pair"} | ({"pair": pair} if pair is not None else {}) | {"role": method}
    checkpoints.save_checkpoint(run.file(runs.refined_file(method)), model.state_dict(), meta)


def with_models(run: runs.Run, *methods: str) -> None:
    metrics = files.read_json(run.file(runs.METRICS))
    for method in methods:
        metrics["models"][method] = metrics["models"]["exbl"]
    files.write_json(run.file(runs.METRICS), metrics)


@pytest.mark.slow
def test_compare_labels_each_model_with_its_pair_and_says_when_pairs_differ(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    recorded = picking.refined_pair(run, "exbl")
    assert (recorded["good"]["index"], recorded["bad"]["index"], recorded["explainer"]) == (0, 1, "gradcam")
    save_refined(run, "counterexamples", recorded)
    with_models(run, "counterexamples")
    at = open_page(COMPARE)
    assert not at.exception
    labels = [c for c in captions(at) if c.startswith("Refined from the pair")]
    assert len(labels) == 2 and all("good #0" in c and "bad #1" in c and "judged on GradCAM maps" in c for c in labels), labels
    assert "different pairs" not in warnings(at)

    other = recorded | {"good": recorded["good"] | {"index": 2}}
    save_refined(run, "counterexamples", other)
    save_refined(run, "region-swap", None)
    with_models(run, "region-swap")
    at = open_page(COMPARE)
    assert "These models came from different pairs" in warnings(at)
    assert "counterexamples from good #2" in warnings(at)
    assert any("pair not recorded" in c for c in captions(at))


@pytest.mark.slow
def test_the_verdict_rule_is_said_once_per_page(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    save_refined(run, "counterexamples", picking.refined_pair(run, "exbl"))
    with_models(run, "counterexamples")
    for page in (COMPARE, "app.py"):
        at = open_page(page)
        assert sum(c.startswith("The rule") for c in captions(at)) == 1, page
        assert all("children in every class" in m.proto.help for m in at.metric if m.label == "Accuracy, shortcut test")


def test_home_says_in_one_sentence_what_to_click_first(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    at = open_page("app.py")
    assert [m.value for m in at.markdown if m.value.startswith("**Click first:**")] == [
        "**Click first:** *Compare*, to see before and after; then try another pair or method on *Explore* and *Refine*."
    ]
    run.file(runs.METRICS).unlink()
    for name in run_models.refined(run):
        run.file(runs.refined_file(name)).unlink()
    assert "**Click first:** *Refine*" in texts(open_page("app.py"))


def explore_sidebar(at: AppTest, label: str):
    return next(w for w in at.sidebar.selectbox if w.label == label)


def test_explore_keeps_its_split_and_filters_across_page_switches(runs_dir: Path, finished_run: Path) -> None:
    finished_copy(finished_run, runs_dir)
    at = open_page(EXPLORE)
    at.sidebar.radio[0].set_value("Test images").run()
    explore_sidebar(at, "True class").set_value("Viral Pneumonia").run()
    explore_sidebar(at, "Sort").set_value("Image number").run()
    at.switch_page(REFINE).run()
    at.switch_page(EXPLORE).run()
    assert not at.exception
    assert at.sidebar.radio[0].value == "Test images"
    assert explore_sidebar(at, "True class").value == "Viral Pneumonia" and explore_sidebar(at, "Sort").value == "Image number"
    assert all("Viral\u00a0Pneumonia" in i.proto.imgs[0].caption.split("→")[0] for i in at.image)


@pytest.mark.slow
def test_a_shortcut_test_image_goes_into_figure_3_and_is_never_marked(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    exemplars = run.file(runs.PAIR).read_bytes()
    at = open_page(EXPLORE)
    at.sidebar.radio[0].set_value(SHORTCUT).run()
    explore_sidebar(at, "Sort").set_value("Image number").run()
    assert not [b for b in at.button if b.label in ("Good", "Bad")]
    chosen = 5
    at.button(key=f"figure-shortcut_test-{chosen}").click().run()
    assert at.button(key=f"figure-shortcut_test-{chosen}").proto.type == "primary"
    at.switch_page(COMPARE).run()
    figure_from = next(r for r in at.radio if r.label == "Images from")
    figure_from.set_value("shortcut_test").run()
    assert not at.exception
    assert chosen in at.multiselect[0].value and len(at.image) == 1
    assert run.file(runs.PAIR).read_bytes() == exemplars, "the pair stays on training images"
    at.switch_page(EXPLORE).run()
    assert at.sidebar.radio[0].value == SHORTCUT and at.button(key=f"figure-shortcut_test-{chosen}").proto.type == "primary"


def test_a_refined_checkpoint_records_the_pair_it_came_from(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    pick = files.read_json(run.file(runs.PAIR))
    assert picking.refined_pair(run, "exbl") == {key: pick[key] for key in ("good", "bad", "rule", "explainer")}
