"""The app's pages, driven by Streamlit's AppTest on tiny synthetic runs.

Each test names one behaviour a user relies on. Training runs are tiny (64x64, a few
images, one epoch) so that the whole file takes seconds, not minutes.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from streamlit.proto.Metric_pb2 import Metric as MetricProto
from streamlit.testing.v1 import AppTest

from exbl_core import checkpoints, config, files, picking, pipeline, run_data, run_models, runs
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.model import build_model
from exbl_core.synthetic import SyntheticConfig
from exbl_core.verdict import Verdict, shortcut_verdict
from studio import pages
from studio.cache import RUNS_DIR_ENV
from studio.jobs import get_runner
from studio.views import EXPLANATION_SILENT, curves

APP = Path(__file__).resolve().parents[1] / "app.py"
PAGES = {"explore": pages.EXPLORE, "refine": pages.REFINE, "compare": pages.COMPARE}
TINY_DATA = SyntheticConfig(size=64, n_train=3, n_val=2, n_test=3)
TINY_TRAIN = TrainConfig(epochs=1, lr=1e-3, batch_size=8)
TINY_REFINE = RefineConfig(epochs=1, lr=1e-3, batch_size=8)


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty runs folder for the app, and no job left running afterwards."""
    monkeypatch.setenv(RUNS_DIR_ENV, str(tmp_path))
    yield tmp_path
    get_runner().cancel()
    assert get_runner().wait(60)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run taken through every step once; tests copy it so they never share state."""
    run = run_data.new_run(tmp_path_factory.mktemp("template") / "tiny", TINY_DATA, TINY_TRAIN, TINY_REFINE)
    run_every_step(run)
    return run.path


def run_every_step(run: runs.Run) -> None:
    """Train, pick images 0 and 1, refine and evaluate, on the CPU."""
    data = run_data.load_data(run)
    device = pipeline.torch.device("cpu")
    pipeline.train_step(run, data, device)
    pipeline.pick_step(run, data, device, good=0, bad=1)
    pipeline.refine_step(run, data, device)
    pipeline.evaluate_step(run, data, device)


def copy_run(source: Path, runs_dir: Path, keep: tuple[str, ...]) -> runs.Run:
    """A copy of ``source`` holding only ``keep`` on top of its config and split."""
    target = runs_dir / "tiny"
    target.mkdir()
    for name in (runs.CONFIG, runs.SPLIT, *keep):
        shutil.copy2(source / name, target / name)
    return runs.open_run(target)


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    return at.switch_page(page).run() if page != "app.py" else at  # app.py opens Home


def infos(at: AppTest) -> str:
    return " ".join(str(e.value) for e in at.info)


def links(at: AppTest) -> list[str]:
    """The pages the page links point to, by their URL names (such as "Data_and_model")."""
    return [link.proto.page for link in at.get("page_link")]


def test_home_without_runs_says_what_to_do_and_links_to_data(runs_dir: Path) -> None:
    at = open_page("app.py")
    assert not at.exception
    assert "No run yet" in infos(at)
    assert "Data_and_model" in links(at)
    assert [b.label for b in at.button] == ["Open the shipped example", "Run the demo"]


def test_home_prefetches_explore_scores_for_a_run_trained_elsewhere(runs_dir: Path, finished_run: Path, monkeypatch) -> None:
    # A CLI-trained run reaches the app with empty caches: home starts GradCAM for both
    # splits in the background, so the first Explore visit finds them ready.
    calls: list[int] = []
    real = picking.training_scores
    monkeypatch.setattr(picking, "training_scores", lambda model, split, tau: calls.append(len(split)) or real(model, split, tau))
    copy_run(finished_run, runs_dir, (runs.UNREFINED,))
    at = open_page("app.py")
    assert not at.exception
    deadline = time.monotonic() + 30
    while len(calls) < 2 and time.monotonic() < deadline:  # the background thread home started
        time.sleep(0.05)
    assert len(calls) == 2, "home did not prefetch one batched pass per split (train and test)"
    assert not open_page(PAGES["explore"]).exception  # waits on the cache entry if its pass is still running
    assert len(calls) == 2, "Explore computed the scores again instead of using the prefetched ones"


@pytest.mark.parametrize("page", PAGES.values())
def test_pages_without_a_model_say_train_one_and_link_to_data(runs_dir: Path, finished_run: Path, page: str) -> None:
    copy_run(finished_run, runs_dir, keep=())
    at = open_page(page)
    assert not at.exception
    assert "No model yet: train one on Data and model" in infos(at)
    assert "Data_and_model" in links(at)


def test_refine_without_a_pair_links_to_explore(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    at = open_page(PAGES["refine"])
    assert "No pair yet" in infos(at)
    assert "Explore" in links(at)


def test_compare_without_a_refined_model_links_to_refine(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED, runs.PAIR))
    at = open_page(PAGES["compare"])
    assert "No refined model yet" in infos(at)
    assert "Refine" in links(at)


@pytest.mark.slow
def test_choosing_synthetic_data_creates_a_run_shows_it_and_trains(runs_dir: Path) -> None:
    at = open_page(pages.DATA)
    at.radio[1].set_value("Quick (tiny, under a minute)").run()
    at.number_input(key="n_train-Quick (tiny, under a minute)").set_value(2)
    at.selectbox(key="size-Quick (tiny, under a minute)").set_value(64)
    at.number_input[1].set_value(1)  # training epochs
    at.text_input(key="run_name").set_value("mine")
    at.button[0].click().run()
    assert not at.exception
    assert (runs_dir / "mine" / runs.CONFIG).is_file()
    assert at.subheader[0].value == "Run 'mine'"
    assert len(at.dataframe) == 1 and len(at.image) >= 1
    train = next(b for b in at.button if b.label == "Train the unrefined model")
    train.click().run()
    assert get_runner().job.kind == "train"
    assert get_runner().wait(120)
    assert get_runner().job.status == "done", get_runner().job.error
    assert (runs_dir / "mine" / runs.UNREFINED).is_file()


@pytest.mark.slow
def test_training_again_keeps_the_old_model_and_results_until_the_new_first_checkpoint(
    runs_dir: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(finished_run, runs_dir, keep=(runs.UNREFINED, runs.PAIR, runs.refined_file("exbl"), runs.METRICS))
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file() and p.name != ".lock"}

    def fails_at_once(*_args, **_kwargs):
        raise pipeline.TrainingError("unrefined training: the loss became nan in epoch 1, batch 1")

    monkeypatch.setattr(pipeline, "fit", fails_at_once)
    at = open_page(pages.DATA)
    next(b for b in at.button if b.label.startswith("Train again")).click().run()
    assert get_runner().wait(60)
    assert get_runner().job.status == "failed" and "nan" in get_runner().job.error
    after = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file() and p.name != ".lock"}
    assert {k: v for k, v in after.items() if k != runs.HISTORY} == {k: v for k, v in before.items() if k != runs.HISTORY}


def test_a_bad_folder_shows_a_clear_message_not_a_traceback(runs_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-dataset"
    (bad / "Cats").mkdir(parents=True)
    at = open_page(pages.DATA)
    at.radio[0].set_value("A data set folder").run()
    at.text_input[0].set_value(str(bad))
    next(b for b in at.button if b.label == "Create the run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "Could not create the run" in at.error[0].value and "Cats" in at.error[0].value


def test_an_empty_run_name_creates_a_fresh_run_folder_never_the_runs_folder_itself(runs_dir: Path) -> None:
    at = open_page(pages.DATA)
    create_run(at, "   ")
    assert not at.exception
    assert not (runs_dir / runs.CONFIG).exists(), "the runs folder itself became a run"
    (made,) = runs.list_runs(runs_dir)
    assert made.path.parent == runs_dir and made.path.name.startswith("run-")


@pytest.mark.parametrize("name", ["../outside", "a/b", ".."])
def test_a_run_name_that_is_not_a_plain_folder_name_is_refused(runs_dir: Path, name: str) -> None:
    at = open_page(pages.DATA)
    create_run(at, name)
    assert not at.exception
    assert len(at.error) == 1 and "plain folder name" in at.error[0].value
    assert not runs.list_runs(runs_dir) and not (runs_dir.parent / "outside").exists()


def mark(at: AppTest, side: str, index: int) -> AppTest:
    return at.button(key=f"{side}-{index}").click().run()


def test_marking_good_and_bad_shows_the_pair_and_links_to_refine(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    at = mark(mark(open_page(PAGES["explore"]), "good", 2), "bad", 5)
    assert not at.exception
    assert at.button(key="good-2").proto.type == "primary" and at.button(key="bad-5").proto.type == "primary"
    assert "**good**: #2" in at.markdown[0].value and "**bad**: #5" in at.markdown[0].value
    assert "Refine" in links(at)


def test_a_mark_can_be_changed(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    at = mark(mark(open_page(PAGES["explore"]), "good", 2), "good", 3)
    assert at.button(key="good-3").proto.type == "primary" and at.button(key="good-2").proto.type == "secondary"


def test_the_same_image_cannot_be_both_good_and_bad(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    at = mark(mark(open_page(PAGES["explore"]), "good", 4), "bad", 4)
    assert not at.exception
    assert "already marked good" in at.warning[0].value
    assert at.button(key="bad-4").proto.type == "secondary"
    assert "**bad**: none yet" in at.markdown[0].value


def refine_page_with_pair(runs_dir: Path, finished_run: Path) -> AppTest:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    at = mark(mark(open_page(PAGES["explore"]), "good", 0), "bad", 1)
    return at.switch_page(PAGES["refine"]).run()


def test_refinement_starts_in_the_background_and_cancels_quickly(runs_dir: Path, finished_run: Path) -> None:
    at = refine_page_with_pair(runs_dir, finished_run)
    at.number_input[0].set_value(200)  # epochs: far more than the test will wait for
    at.number_input[3].set_value(50)  # patience
    next(b for b in at.button if b.label == "Start refinement").click().run()
    job = get_runner().job
    assert job.kind == "refine" and job.running
    next(b for b in at.button if b.label == "Cancel").click().run()
    started = time.monotonic()
    assert get_runner().wait(30)
    assert job.status == "cancelled", job.error
    assert time.monotonic() - started < 2.0
    assert (runs_dir / "tiny" / runs.PAIR).is_file()


def blocking_job(kind: str, run_path: str, events: tuple[dict, ...] = ()) -> threading.Event:
    """Start a job that emits ``events`` and then runs until the returned event is set."""
    release = threading.Event()

    Path(run_path).mkdir(parents=True, exist_ok=True)  # a job holds its run folder's lock, so the folder must exist

    def work(emit, cancel) -> str:
        for e in events:
            emit(e)
        return "done" if release.wait(30) else "cancelled"

    get_runner().start(kind, run_path, work)
    return release


def test_while_another_job_runs_refine_locks_its_settings_names_the_job_and_offers_cancel(runs_dir: Path, finished_run: Path) -> None:
    at = refine_page_with_pair(runs_dir, finished_run)
    release = blocking_job("train", str(runs_dir / "elsewhere"))
    blocker = get_runner().job
    try:
        next(b for b in at.button if b.label == "Start refinement").click().run()  # drawn before the job started
        assert get_runner().job is blocker
        assert "A training job is running on run 'elsewhere'" in infos(at)
        assert "Start refinement" not in [b.label for b in at.button]
        assert all(n.disabled for n in at.number_input) and "Cancel it" in [b.label for b in at.button]
        assert not at.warning, "no warning that would stay on the page after the job ends"
    finally:
        release.set()
    assert get_runner().wait(30)
    at.run()
    assert "is running" not in infos(at) and "Start refinement" in [b.label for b in at.button]


def test_home_while_a_job_runs_elsewhere_locks_the_demo_and_names_the_job(runs_dir: Path) -> None:
    at = open_page("app.py")
    release = blocking_job("refine", str(runs_dir / "elsewhere"))
    try:
        next(b for b in at.button if b.label == "Run the demo").click().run()  # drawn before the job started
        assert get_runner().job.run_path.endswith("elsewhere")
        assert "A refinement job is running on run 'elsewhere'" in infos(at)
        assert next(b for b in at.button if b.label == "Run the demo").disabled
        assert not at.warning and [p.name for p in runs_dir.iterdir()] == ["elsewhere"], (
            "no stale warning, no folder for a demo that did not start"
        )
    finally:
        release.set()


def test_while_training_runs_refine_says_so_and_links_to_it(runs_dir: Path, finished_run: Path) -> None:
    at = refine_page_with_pair(runs_dir, finished_run)
    release = blocking_job("train", str(runs_dir / "tiny"))
    try:
        at.run()
        assert "A training job is running on this run" in infos(at)
        assert "Data_and_model" in links(at)
        assert "Start refinement" not in [b.label for b in at.button]
    finally:
        release.set()


def finished_copy(finished_run: Path, runs_dir: Path) -> runs.Run:
    return copy_run(finished_run, runs_dir, keep=(runs.UNREFINED, runs.PAIR, runs.refined_file("exbl"), runs.HISTORY, runs.METRICS))


def expected_verdict(run: runs.Run) -> Verdict:
    metrics = files.read_json(run.file(runs.METRICS))
    return shortcut_verdict(metrics["models"]["unrefined"], metrics["models"]["exbl"])


def texts(at: AppTest) -> str:
    return " ".join(str(m.value) for m in at.markdown)


@pytest.mark.slow
def test_compare_shows_verdict_table_figure_and_downloads(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    at = open_page(PAGES["compare"])
    assert not at.exception
    assert [s.value for s in at.subheader] == ["Verdicts", "Table 1", "Before and after (the paper's Figure 3)", "Downloads"]
    verdict = expected_verdict(run)
    assert verdict.label in texts(at) + " ".join(str(b.proto.label) for b in at.get("badge"))
    assert "the full verdict needs the oracle" in texts(at)
    assert len(at.image) == 1 and len(at.metric) == 4
    assert [b.label for b in at.get("download_button")] == ["Figure 3 (PNG)", "Table 1 (CSV)", "eXBL checkpoint"]
    assert "Train the oracle" in [b.label for b in at.button], "without an oracle, Compare offers to train one"


def stand_in(run: runs.Run, source: str, which: str) -> None:
    """Save ``source``'s weights as the run's ``which`` model: a checkpoint records its role, so a plain copy is refused."""
    model = build_model(num_classes=4)
    meta = checkpoints.load_checkpoint(run.file(run_models.model_file(source)), model)
    checkpoints.save_checkpoint(run.file(run_models.model_file(which)), model.state_dict(), {**meta, "role": which})


@pytest.mark.slow
def test_compare_puts_every_refined_model_side_by_side_with_the_oracles_verdict(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    metrics = files.read_json(run.file(runs.METRICS))
    stand_in(run, "exbl", "counterexamples")
    stand_in(run, "unrefined", "oracle")
    models = metrics["models"]
    models["counterexamples"] = models["exbl"]
    models["oracle"] = json.loads(json.dumps(models["unrefined"]))
    models["oracle"]["shortcut_test"]["accuracy"] = 1.0
    files.write_json(run.file(runs.METRICS), metrics)
    at = open_page(PAGES["compare"])
    assert not at.exception
    assert "of the oracle's shortcut-test accuracy" in texts(at) and "Train the oracle" not in [b.label for b in at.button]
    assert [b.label for b in at.get("download_button")][-2:] == ["eXBL checkpoint", "counterexamples checkpoint"]
    assert len(at.metric) == 8, "four cards per refined model"


def test_refine_offers_every_method_and_says_what_each_needs(runs_dir: Path, finished_run: Path) -> None:
    at = refine_page_with_pair(runs_dir, finished_run)
    method = at.selectbox[0]
    assert method.label == "Method" and list(method.options)[0].startswith("eXBL (needs only the two clicks)")
    assert any("needs a lung mask for every training image" in o for o in method.options)
    epochs, lr = (next(n for n in at.number_input if n.label == label) for label in ("Epochs", "Learning rate"))
    paper_epochs, paper_lr = epochs.value, lr.value
    method.select("counterexamples").run()
    assert "pastes the bad exemplar's pixels" in " ".join(c.value for c in at.caption).lower()
    epochs, lr = (next(n for n in at.number_input if n.label == label) for label in ("Epochs", "Learning rate"))
    # the method's own schedule shows as the defaults: 8/3 the epochs at 3x the learning rate
    assert epochs.value == max(1, round(paper_epochs * 8 / 3)) and lr.value == pytest.approx(paper_lr * 3)


@pytest.mark.slow
def test_a_change_is_green_only_when_the_verdict_calls_it_an_improvement(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    metrics = files.read_json(run.file(runs.METRICS))
    for success, (before, after) in ((False, (0.40, 0.35)), (True, (0.40, 0.10))):  # a small drop in the gap, then a halved one
        models = metrics["models"]
        models["unrefined"]["test"]["accuracy"] = models["exbl"]["test"]["accuracy"] = 0.95
        models["unrefined"]["shortcut_test"]["accuracy"], models["exbl"]["shortcut_test"]["accuracy"] = 0.95 - before, 0.95 - after
        files.write_json(run.file(runs.METRICS), metrics)
        at = open_page(PAGES["compare"])
        gap = next(m for m in at.metric if m.label == "Shortcut gap")
        assert expected_verdict(run).success is success
        assert (gap.proto.color == MetricProto.MetricColor.GREEN) is success, gap.proto
        assert all(m.proto.color != MetricProto.MetricColor.GREEN for m in at.metric if m.label != "Shortcut gap" and not success)


@pytest.mark.slow
def test_the_figure_picker_takes_at_most_8_rows_offers_no_select_all_and_keeps_the_choice(runs_dir: Path, finished_run: Path) -> None:
    finished_copy(finished_run, runs_dir)
    at = open_page(PAGES["compare"])
    picker = at.multiselect[0]
    assert picker.max_selections == 8
    picker.set_value([2, 0]).run()
    at.switch_page(PAGES["refine"]).run()
    at.switch_page(PAGES["compare"]).run()
    assert at.multiselect[0].value == [2, 0]


def test_without_a_shortcut_test_the_summary_says_there_is_no_verdict() -> None:
    def summary() -> None:
        from studio import views

        split = {"accuracy": 0.9, "activation_precision": 0.5}
        views.model_summary({"test": split}, {"test": split | {"accuracy": 0.95}})

    at = AppTest.from_function(summary).run()
    assert not at.exception
    assert "no verdict" in infos(at) and [m.label for m in at.metric] == ["Accuracy, confounded test", "Activation Precision, test"]
    assert all(m.proto.color != MetricProto.MetricColor.GREEN for m in at.metric)


def test_home_states_the_verdict_and_links_to_compare_when_the_run_is_done(runs_dir: Path, finished_run: Path) -> None:
    run = finished_copy(finished_run, runs_dir)
    at = open_page("app.py")
    assert "Result" in [s.value for s in at.subheader]
    assert expected_verdict(run).sentence in texts(at).lower()
    assert "Compare" in links(at)


def test_home_while_the_demo_trains_shows_no_step_as_done_and_the_time_left(runs_dir: Path, finished_run: Path) -> None:
    run = copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))  # the checkpoint of a best epoch exists already
    now = time.time()
    events = (
        {"type": "plan", "phases": {"unrefined": 14, "refine": 3}},
        {"type": "start", "phase": "unrefined", "epochs": 14},
        {"type": "batch_end", "phase": "unrefined", "epoch": 1, "batch": 1, "batches": 4, "loss": 1.0},
    )
    release = blocking_job("demo", str(run.path), events)
    try:
        at = open_page("app.py")
        steps = [link.proto.label for link in at.get("page_link")][:4]
        assert steps[0] == "Data and unrefined model: running" and all(s.endswith("not yet") for s in steps[1:]), steps
        text = at.get("progress")[0].proto.text
        assert "Step 1 of 4" in text and "epoch 1 of 14" in text and "elapsed" in text and "left" in text
        assert "Result" not in [s.value for s in at.subheader]
    finally:
        release.set()
    assert time.time() - now < 60


def test_refine_with_a_new_pair_shows_no_curves_of_the_old_one(runs_dir: Path, finished_run: Path) -> None:
    finished_copy(finished_run, runs_dir)
    at = open_page(PAGES["refine"])  # the saved pair: its curves and verdict, labelled with the pair
    assert len(at.get("plotly_chart")) == 1
    assert any(c.value.startswith("The last refinement of this run, with this pair") for c in at.caption)
    assert "Compare" in links(at)
    at = mark(mark(at.switch_page(PAGES["explore"]).run(), "good", 2), "bad", 3).switch_page(PAGES["refine"]).run()
    assert not at.get("plotly_chart")
    assert "No refinement with this pair yet" in infos(at)
    assert "Compare" not in links(at)


def test_the_chart_says_when_the_explanation_loss_is_zero() -> None:
    def epoch(n: int, active: float) -> dict:
        return {
            "type": "epoch_end",
            "epoch": n,
            "epochs": 3,
            "loss": 0.5,
            "ce": 0.5,
            "expl": 0.0,
            "active_triplets": active,
            "val_accuracy": 0.9,
            "val_ap": 0.5,
        }

    assert EXPLANATION_SILENT in str(curves([epoch(1, 0.2), epoch(2, 0.0)]).to_dict()["layout"].get("annotations"))
    assert not curves([epoch(1, 0.0), epoch(2, 0.1)]).to_dict()["layout"].get("annotations", [])[2:]  # subplot titles only
    total = next(t for t in curves([epoch(1, 0.0)]).data if t.name == "total")
    assert total.line.dash == "dash", "the total must not hide CE when the two are equal"


def test_explore_offers_the_shortcut_test_and_says_whose_cams_these_are(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    at = open_page(PAGES["explore"])
    assert "Shortcut test images (children in every class)" in at.sidebar.radio[0].options
    assert any("**unrefined** model's GradCAM" in c.value for c in at.caption)
    at.sidebar.radio[0].set_value("Shortcut test images (children in every class)").run()
    assert not at.exception
    assert not [b for b in at.button if b.label in ("Good", "Bad")], "marks stay on training images"
    assert all("\u00a0" in c and "AP 0" not in c for c in (i.proto.imgs[0].caption for i in at.image))


def test_explore_while_the_model_trains_says_its_explanations_will_change(runs_dir: Path, finished_run: Path) -> None:
    run = copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    release = blocking_job("train", str(run.path), ({"type": "start", "phase": "unrefined", "epochs": 3},))
    try:
        at = open_page(PAGES["explore"])
        assert "A training job is running on this run" in infos(at) and "they change as it trains" in infos(at)
    finally:
        release.set()


def test_a_data_set_folder_trains_with_the_papers_settings(runs_dir: Path) -> None:
    at = open_page(pages.DATA)
    at.radio[0].set_value("A data set folder").run()
    epochs = next(n for n in at.number_input if n.label.startswith("Training epochs"))
    assert epochs.value == config.PAPER_TRAIN.epochs
    assert any("paper's settings" in c.value for c in at.caption)


def test_two_sessions_starting_at_once_the_second_gets_the_running_job_not_another(runs_dir: Path, finished_run: Path) -> None:
    first = refine_page_with_pair(runs_dir, finished_run)
    second = mark(mark(open_page(PAGES["explore"]), "good", 0), "bad", 1).switch_page(PAGES["refine"]).run()
    first.number_input[0].set_value(200)  # epochs: far more than the test will wait for
    first.number_input[3].set_value(50)  # patience
    next(b for b in first.button if b.label == "Start refinement").click().run()
    job = get_runner().job
    assert job.running
    next(b for b in second.button if b.label == "Start refinement").click().run()
    assert get_runner().job is job
    assert not second.exception
    labels = [b.label for b in second.button]
    assert "Start refinement" not in labels and "Cancel" in labels


# --------------------------------------------------------------------------- backbone weights

START = "Start the model from"


def start_radio(at: AppTest):
    return next(r for r in at.radio if r.label == START)


def create_run(at: AppTest, name: str) -> AppTest:
    at.text_input(key="run_name").set_value(name)
    return next(b for b in at.button if b.label == "Create the run").click().run()


def test_a_weights_file_chosen_on_the_page_is_recorded_in_the_run(runs_dir: Path, hub: Path, weights_file: Path) -> None:
    at = open_page(pages.DATA)
    at.radio[1].set_value("Quick (tiny, under a minute)").run()
    at.number_input(key="n_train-Quick (tiny, under a minute)").set_value(2)
    at.selectbox(key="size-Quick (tiny, under a minute)").set_value(64)
    assert start_radio(at).value == "Random weights"  # synthetic data: random by default
    start_radio(at).set_value("A weights file").run()
    at.text_input(key="weights_file").set_value(str(weights_file))
    at = create_run(at, "mine")
    assert not at.exception and not at.error
    model = files.read_json(runs_dir / "mine" / runs.CONFIG)["model"]
    assert (model["weights"], model["weights_file"], model["frozen_blocks"]) == ("file", str(weights_file), 6)
    assert any(f"Starts from the weights in {weights_file}" in c.value for c in at.caption)


def test_a_foreign_weights_file_on_the_page_is_refused_naming_it(runs_dir: Path, hub: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), foreign)
    at = open_page(pages.DATA)
    start_radio(at).set_value("A weights file").run()
    at.text_input(key="weights_file").set_value(str(foreign))
    at = create_run(at, "mine")
    assert len(at.error) == 1 and f"{foreign}: not a MobileNetV2 backbone" in at.error[0].value
    assert not (runs_dir / "mine" / runs.CONFIG).exists()


def test_imagenet_without_the_cached_file_says_how_to_get_it(runs_dir: Path, hub: Path) -> None:
    at = open_page(pages.DATA)
    start_radio(at).set_value("ImageNet weights (as in the paper)").run()
    assert any("python -m exbl_core weights --download" in c.value for c in at.caption)
    at = create_run(at, "mine")
    assert len(at.error) == 1 and "not in the local torch hub cache" in at.error[0].value
    assert not (runs_dir / "mine").exists()


def test_a_data_set_folder_starts_from_cached_imagenet_by_default(runs_dir: Path, cached_imagenet: Path) -> None:
    at = open_page(pages.DATA)
    at.radio[0].set_value("A data set folder").run()
    assert start_radio(at).value == "ImageNet weights (as in the paper)"


@pytest.mark.slow
def test_compare_puts_the_papers_table1_beside_a_real_data_run(runs_dir: Path, make_database, weights_file: Path) -> None:
    spec = config.FolderSpec(str(make_database(per_class=4)), size=32, train=2, val=1, test=1)
    run_every_step(run_data.new_run(runs_dir / "real", spec, TINY_TRAIN, TINY_REFINE, start=str(weights_file)))
    at = open_page(PAGES["compare"])
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["metric", "split", "unrefined", "eXBL", "Δ eXBL", "paper: unrefined", "paper: eXBL"]
    # The paper's values sit beside the four rows it reports; the explainer rows it has no value for stay empty.
    assert table["paper: unrefined"].dropna().tolist() == [0.94, 0.95, 0.32, 0.32]
    assert table["paper: eXBL"].dropna().tolist() == [0.89, 0.90, 0.34, 0.35]
    assert table["paper: unrefined"].head(4).tolist() == [0.94, 0.95, 0.32, 0.32]
    captions = " ".join(c.value for c in at.caption)
    assert "The paper's columns are its Table 1" in captions and f"Started from the weights in {weights_file}" in captions


# --------------------------------------------------------------------------- explainers


def explain_with(at: AppTest):
    return next(r for r in at.sidebar.radio if r.label == "Explain with")


def tile_captions(at: AppTest) -> list[str]:
    return [i.proto.imgs[0].caption for i in at.image]


def test_explore_explains_with_occlusion_on_request_and_keeps_the_choice_across_pages(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    at = open_page(PAGES["explore"])
    assert explain_with(at).value == "gradcam"
    assert tile_captions(at) and all(c.endswith("·\u00a0GradCAM") for c in tile_captions(at)), tile_captions(at)
    explain_with(at).set_value("occlusion").run()
    assert not at.exception
    assert tile_captions(at) and all("·\u00a0Occlusion" in c and "on\u00a0lungs" in c for c in tile_captions(at)), tile_captions(at)
    assert any("model's Occlusion map" in c.value and "what the model uses" in c.value for c in at.caption)
    at.switch_page(PAGES["refine"]).run()
    at.switch_page(PAGES["explore"]).run()
    assert explain_with(at).value == "occlusion"
    assert all("·\u00a0Occlusion" in c for c in tile_captions(at))


def test_the_zoom_shows_gradcam_and_occlusion_side_by_side(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    at = open_page(PAGES["explore"])
    at.button(key="zoom-3").click().run()
    assert not at.exception
    zoomed = [i.proto.imgs[0].caption for i in at.image if not i.proto.imgs[0].caption.startswith("#")]
    assert [c.split(" ")[0] for c in zoomed] == ["Input,", "GradCAM", "Occlusion"], zoomed


@pytest.mark.slow
def test_suggest_reads_occlusion_maps_says_so_and_shows_them(runs_dir: Path, finished_run: Path, monkeypatch) -> None:
    from exbl_core import faithfulness

    calls: list[int] = []
    real = faithfulness.faithful_pick
    monkeypatch.setattr(faithfulness, "faithful_pick", lambda model, train: calls.append(len(train)) or real(model, train))
    run = copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    at = open_page(PAGES["explore"])
    next(b for b in at.button if b.label == "Suggest a pair from occlusion").click().run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    good, bad, found = real(run_models.load_model(run), run_data.load_split(run, "train"))
    assert calls, "the suggestion did not come from faithful_pick"
    assert at.success[0].value == (
        f"Suggested from occlusion maps of {found['explained']} correctly classified training images: bad #{bad} keeps "
        f"{found['bad_lung_share']:.0%} of its map on the lungs, good #{good} keeps {found['good_lung_share']:.0%}."
    )
    assert f"**good**: #{good}" in at.markdown[0].value and f"**bad**: #{bad}" in at.markdown[0].value
    assert explain_with(at).value == "occlusion", "Explore shows the maps the suggestion came from"
    assert {f"good #{good}, occlusion", f"bad #{bad}, occlusion"} <= set(tile_captions(at))


def saved_pick_after_start(at: AppTest) -> dict:
    """Start refinement from Refine, cancel it at once, and read the pair.json it wrote first."""
    at = at.switch_page(PAGES["refine"]).run()
    at.number_input[0].set_value(200)  # epochs: far more than the test will wait for
    next(b for b in at.button if b.label == "Start refinement").click().run()
    get_runner().cancel()
    assert get_runner().wait(60)
    return files.read_json(Path(get_runner().job.run_path) / runs.PAIR)


@pytest.mark.slow
def test_a_pair_with_one_mark_made_on_occlusion_is_saved_as_judged_on_occlusion(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    at = open_page(PAGES["explore"])
    explain_with(at).set_value("occlusion").run()
    at = mark(at, "good", 2)
    explain_with(at).set_value("gradcam").run()
    at = mark(at, "bad", 5)  # the bad one on GradCAM: the good one on occlusion still makes it an occlusion pick
    pick = saved_pick_after_start(at)
    assert (pick["good"]["index"], pick["bad"]["index"], pick["explainer"], pick["rule"]) == (2, 5, "occlusion", "user")


@pytest.mark.slow
def test_a_pair_marked_on_gradcam_alone_is_saved_as_judged_on_gradcam(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED,))
    pick = saved_pick_after_start(mark(mark(open_page(PAGES["explore"]), "good", 2), "bad", 5))
    assert (pick["explainer"], pick["rule"]) == ("gradcam", "user")


def with_child_cps(run: runs.Run, gradcam: float, occlusion: float) -> dict:
    """metrics.json rewritten so that GradCAM's and occlusion's child CP on the shortcut test are the given ones."""
    metrics = files.read_json(run.file(runs.METRICS))
    by = metrics["models"]["unrefined"]["shortcut_test"]["by_explainer"]
    by["gradcam"]["child_cp"], by["occlusion"]["child_cp"] = gradcam, occlusion
    files.write_json(run.file(runs.METRICS), metrics)
    return metrics


@pytest.mark.parametrize("page", [PAGES["explore"], PAGES["compare"]])
def test_explore_and_compare_say_once_when_gradcam_and_occlusion_disagree(runs_dir: Path, finished_run: Path, page: str) -> None:
    from exbl_core import faithfulness

    run = finished_copy(finished_run, runs_dir)
    with_child_cps(run, gradcam=0.5, occlusion=0.6)  # close: no sentence
    assert "disagree" not in infos(open_page(page))
    metrics = with_child_cps(run, gradcam=0.1, occlusion=0.8)
    sentence = faithfulness.disagreement(metrics["models"]["unrefined"]["shortcut_test"])
    at = open_page(page)
    assert not at.exception
    assert sentence and [e.value for e in at.info].count(sentence) == 1 and infos(at).count("disagree") == 1


def test_map_store_computes_each_map_once_and_prefetch_gives_way_to_a_page() -> None:
    import numpy as np

    from studio.cache import MapStore

    computed: list[list[int]] = []
    computing = threading.Event()

    def compute(indices: list[int]) -> np.ndarray:
        computed.append(list(indices))
        computing.set()
        time.sleep(0.05)  # an image's occlusion map, in miniature
        return np.stack([np.full((2, 2), i, np.float32) for i in indices])

    store = MapStore(compute)
    assert store.get([3, 1])[:, 0, 0].tolist() == [3, 1] and computed == [[3, 1]], "one batch for a page's missing maps"
    assert store.get([1, 3]).shape == (2, 2, 2) and len(computed) == 1, "kept, not computed again"
    computing.clear()
    thread = store.prefetch(list(range(10, 30)))
    assert computing.wait(5), "the prefetch never started"  # the background thread is inside its first image
    started = time.monotonic()
    assert store.get([5])[0, 0, 0] == 5
    assert time.monotonic() - started < 0.5, "the page waited for more than one image of prefetching"
    thread.join(5)
    assert not thread.is_alive() and not store.has(29), "the prefetch stopped for the page instead of filling all 20"
    thread = store.prefetch([40, 41])
    thread.join(5)
    assert store.has(40) and store.has(41) and [40] in computed, "prefetch fills one image at a time"
    assert store.prefetch([40, 41]) is None, "nothing to do when the maps are there"
