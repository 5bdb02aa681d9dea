"""The pipeline's rules: which images the automatic pick and Figure 3 use, and runs from before a setting existed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from exbl_core import files, picking, pipeline, results, run_data, run_models, runs
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.data import VIRAL_PNEUMONIA, Split
from exbl_core.synthetic import SyntheticConfig


def _split(labels: list[int]) -> Split:
    n = len(labels)
    images, masks = torch.zeros(n, 1, 8, 8, dtype=torch.uint8), torch.zeros(n, 8, 8, dtype=torch.bool)
    return Split(images, masks, torch.tensor(labels), [str(i) for i in range(n)])


def test_figure_rows_are_the_viral_pneumonia_images_with_the_lowest_unrefined_ap():
    vp = VIRAL_PNEUMONIA
    split = _split([vp, 0, vp, vp, 1, vp, vp])
    ap = torch.tensor([0.9, 0.0, 0.2, 0.5, 0.0, 0.2, 0.1])  # non-VP images have the lowest AP and must be ignored
    assert results.default_figure_rows(split, ap, n=3) == [6, 2, 5]  # ties keep image order


def test_figure_rows_with_fewer_viral_pneumonia_images_than_asked_returns_them_all():
    split = _split([VIRAL_PNEUMONIA, 0, 0])
    assert results.default_figure_rows(split, torch.tensor([0.3, 0.1, 0.2]), n=4) == [0]


def test_auto_pick_takes_the_best_and_the_worst_correct_image_of_one_class():
    labels = torch.tensor([0, 0, 0, 1, 1])
    preds = torch.tensor([0, 0, 1, 1, 1])  # image 2 is wrong: never picked, despite its AP
    ap = torch.tensor([0.5, 0.2, 1.0, 0.9, 0.0])
    good, bad = picking.auto_pick({"preds": preds, "ap": ap}, labels)
    assert (good, bad) == (3, 4)  # good is the best correct image; bad the worst correct one of its class


def test_auto_pick_refuses_when_every_candidate_has_the_same_ap():
    labels = torch.tensor([0, 0])
    with pytest.raises(ValueError, match="same AP"):
        picking.auto_pick({"preds": labels.clone(), "ap": torch.tensor([0.4, 0.4])}, labels)


def test_a_run_created_before_the_start_was_recorded_trains_from_the_default_and_notes_nothing(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=8)
    run = run_data.new_run(
        tmp_path / "old", SyntheticConfig(size=32, n_train=2, n_val=1, n_test=1), cfg, RefineConfig(epochs=1, batch_size=8)
    )
    config = run.config()
    del config["model"]  # as written before config.json recorded the weights
    files.write_json(run.file(runs.CONFIG), config)
    assert run_models.start_weights(run) is None and results.table1_note(run) is None
    assert pipeline.train_step(run, run_data.load_data(run), torch.device("cpu")).status == "done"


def test_a_methods_schedule_scales_the_runs_refinement_settings_and_a_user_setting_wins(run_copy):
    run = runs.open_run(run_copy)
    base = run_data.train_config(run, "refine")
    assert run_data.refine_settings(run, {"method": "exbl"}) == replace(base, method="exbl")
    counter = run_data.refine_settings(run, {"method": "counterexamples"})
    assert counter.epochs == max(1, round(base.epochs * 8 / 3)) and counter.lr == pytest.approx(base.lr * 3)
    mine = run_data.refine_settings(run, {"method": "counterexamples", "epochs": 1})
    assert mine.epochs == 1 and mine.lr == pytest.approx(base.lr * 3)


def test_a_schedule_never_leaks_into_the_runs_settings(run_copy):
    run = runs.open_run(run_copy)
    before = run_data.train_config(run, "refine")
    data = run_data.load_data(run)
    pipeline.refine_step(run, data, torch.device("cpu"), overrides={"method": "counterexamples"})
    after = run_data.train_config(run, "refine")
    assert (after.epochs, after.lr) == (before.epochs, before.lr)  # the next exbl refinement keeps the paper's schedule
    assert after.method == "counterexamples"
