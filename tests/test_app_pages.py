"""The app's pages, driven by Streamlit's AppTest on tiny synthetic runs.

Each test names one behaviour a user relies on. Training runs are tiny (64x64, a few
images, one epoch) so that the whole file takes seconds, not minutes.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from exbl_core import pipeline, runs
from exbl_core.synthetic import SyntheticConfig
from exbl_core.training import TrainConfig
from studio.cache import RUNS_DIR_ENV
from studio.jobs import get_runner

APP = Path(__file__).resolve().parents[1] / "app.py"
PAGES = {"explore": "pages/2_Explore.py", "refine": "pages/3_Refine.py", "compare": "pages/4_Compare.py"}
TINY_DATA = SyntheticConfig(size=64, n_train=3, n_val=2, n_test=3)
TINY_TRAIN = TrainConfig(epochs=1, lr=1e-3, batch_size=8)


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
    run = pipeline.new_run(tmp_path_factory.mktemp("template") / "tiny", TINY_DATA, TINY_TRAIN, TINY_TRAIN)
    run_every_step(run)
    return run.path


def run_every_step(run: runs.Run) -> None:
    """Train, pick images 0 and 1, refine and evaluate, on the CPU."""
    data = pipeline.load_data(run)
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
    assert [b.label for b in at.button] == ["Run the demo"]


def test_home_prefetches_explore_scores_for_a_run_trained_elsewhere(runs_dir: Path, finished_run: Path, monkeypatch) -> None:
    # A CLI-trained run reaches the app with empty caches: home starts GradCAM for both
    # splits in the background, so the first Explore visit finds them ready.
    calls: list[int] = []
    real = pipeline.training_scores
    monkeypatch.setattr(pipeline, "training_scores", lambda model, split, tau: calls.append(len(split)) or real(model, split, tau))
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
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED, runs.EXEMPLARS))
    at = open_page(PAGES["compare"])
    assert "No refined model yet" in infos(at)
    assert "Refine" in links(at)


def test_choosing_synthetic_data_creates_a_run_shows_it_and_trains(runs_dir: Path) -> None:
    at = open_page("pages/1_Data_and_model.py")
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


def test_training_again_keeps_the_old_model_and_results_until_the_new_first_checkpoint(
    runs_dir: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(finished_run, runs_dir, keep=(runs.UNREFINED, runs.EXEMPLARS, runs.REFINED, runs.METRICS))
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file() and p.name != ".lock"}

    def fails_at_once(*_args, **_kwargs):
        raise pipeline.TrainingError("unrefined training: the loss became nan in epoch 1, batch 1")

    monkeypatch.setattr(pipeline, "fit", fails_at_once)
    at = open_page("pages/1_Data_and_model.py")
    next(b for b in at.button if b.label.startswith("Train again")).click().run()
    assert get_runner().wait(60)
    assert get_runner().job.status == "failed" and "nan" in get_runner().job.error
    after = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file() and p.name != ".lock"}
    assert {k: v for k, v in after.items() if k != runs.HISTORY} == {k: v for k, v in before.items() if k != runs.HISTORY}


def test_a_bad_folder_shows_a_clear_message_not_a_traceback(runs_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-dataset"
    (bad / "Cats").mkdir(parents=True)
    at = open_page("pages/1_Data_and_model.py")
    at.radio[0].set_value("A data set folder").run()
    at.text_input[0].set_value(str(bad))
    next(b for b in at.button if b.label == "Create the run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "Could not create the run" in at.error[0].value and "Cats" in at.error[0].value


def mark(at: AppTest, role: str, index: int) -> AppTest:
    return at.button(key=f"{role}-{index}").click().run()


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
    assert (runs_dir / "tiny" / runs.EXEMPLARS).is_file()


def test_a_second_start_is_refused_while_a_job_runs(runs_dir: Path, finished_run: Path) -> None:
    at = refine_page_with_pair(runs_dir, finished_run)
    release = threading.Event()
    (runs_dir / "elsewhere").mkdir()  # a job holds its run folder's lock, so the folder must exist
    blocker = get_runner().start("train", str(runs_dir / "elsewhere"), lambda emit, cancel: "done" if release.wait(30) else "cancelled")
    try:
        next(b for b in at.button if b.label == "Start refinement").click().run()
        assert get_runner().job is blocker
        assert "Another job is already running" in at.warning[0].value
    finally:
        release.set()


def test_while_training_runs_refine_says_so_and_links_to_it(runs_dir: Path, finished_run: Path) -> None:
    at = refine_page_with_pair(runs_dir, finished_run)
    release = threading.Event()
    get_runner().start("train", str(runs_dir / "tiny"), lambda emit, cancel: "done" if release.wait(30) else "cancelled")
    try:
        at.run()
        assert "A train job is running on this run" in infos(at)
        assert "Data_and_model" in links(at)
        assert "Start refinement" not in [b.label for b in at.button]
    finally:
        release.set()


def test_compare_shows_figure_table_shortcut_test_and_downloads(runs_dir: Path, finished_run: Path) -> None:
    copy_run(finished_run, runs_dir, keep=(runs.UNREFINED, runs.EXEMPLARS, runs.REFINED, runs.METRICS))
    at = open_page(PAGES["compare"])
    assert not at.exception
    assert [s.value for s in at.subheader] == ["Table 1", "Shortcut test", "Before and after (the paper's Figure 3)", "Downloads"]
    assert len(at.image) == 1 and len(at.metric) == 3
    assert [b.label for b in at.get("download_button")] == ["Figure 3 (PNG)", "Table 1 (CSV)", "Refined checkpoint"]


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
    at = open_page("pages/1_Data_and_model.py")
    at.radio[1].set_value("Quick (tiny, under a minute)").run()
    at.number_input(key="n_train-Quick (tiny, under a minute)").set_value(2)
    at.selectbox(key="size-Quick (tiny, under a minute)").set_value(64)
    assert start_radio(at).value == "Random weights"  # synthetic data: random by default
    start_radio(at).set_value("A weights file").run()
    at.text_input(key="weights_file").set_value(str(weights_file))
    at = create_run(at, "mine")
    assert not at.exception and not at.error
    model = runs.read_json(runs_dir / "mine" / runs.CONFIG)["model"]
    assert (model["weights"], model["weights_file"], model["frozen_blocks"]) == ("file", str(weights_file), 6)
    assert any(f"Starts from the weights in {weights_file}" in c.value for c in at.caption)


def test_a_foreign_weights_file_on_the_page_is_refused_naming_it(runs_dir: Path, hub: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), foreign)
    at = open_page("pages/1_Data_and_model.py")
    start_radio(at).set_value("A weights file").run()
    at.text_input(key="weights_file").set_value(str(foreign))
    at = create_run(at, "mine")
    assert len(at.error) == 1 and f"{foreign}: not a MobileNetV2 backbone" in at.error[0].value
    assert not (runs_dir / "mine" / runs.CONFIG).exists()


def test_imagenet_without_the_cached_file_says_how_to_get_it(runs_dir: Path, hub: Path) -> None:
    at = open_page("pages/1_Data_and_model.py")
    start_radio(at).set_value("ImageNet weights (as in the paper)").run()
    assert any("python -m exbl_core weights --download" in c.value for c in at.caption)
    at = create_run(at, "mine")
    assert len(at.error) == 1 and "not in the local torch hub cache" in at.error[0].value
    assert not (runs_dir / "mine").exists()


def test_a_data_set_folder_starts_from_cached_imagenet_by_default(runs_dir: Path, cached_imagenet: Path) -> None:
    at = open_page("pages/1_Data_and_model.py")
    at.radio[0].set_value("A data set folder").run()
    assert start_radio(at).value == "ImageNet weights (as in the paper)"


def test_compare_puts_the_papers_table1_beside_a_real_data_run(runs_dir: Path, make_database, weights_file: Path) -> None:
    spec = pipeline.FolderSpec(str(make_database(per_class=4)), size=32, train=2, val=1, test=1)
    run_every_step(pipeline.new_run(runs_dir / "real", spec, TINY_TRAIN, TINY_TRAIN, start=str(weights_file)))
    at = open_page(PAGES["compare"])
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["metric", "split", "unrefined", "eXBL", "Δ", "paper: unrefined", "paper: eXBL"]
    assert table["paper: unrefined"].tolist() == [0.94, 0.95, 0.32, 0.32]
    assert table["paper: eXBL"].tolist() == [0.89, 0.90, 0.34, 0.35]
    captions = " ".join(c.value for c in at.caption)
    assert "The paper's columns are its Table 1" in captions and f"Started from the weights in {weights_file}" in captions
