"""evaluate measures only what changed: an unchanged checkpoint keeps its metrics.json entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exbl_core import evaluation, pipeline, run_data, run_models, runs


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ``predict_with_cams`` call of evaluate, by the number of images it was given."""
    calls: list[int] = []
    real = evaluation.predict_with_cams
    monkeypatch.setattr(evaluation, "predict_with_cams", lambda model, x: calls.append(len(x)) or real(model, x))
    return calls


def test_a_second_evaluation_measures_nothing_that_did_not_change(run_copy: Path, counted: list[int]) -> None:
    run = runs.open_run(run_copy)
    data, cpu = run_data.load_data(run), torch.device("cpu")
    first = pipeline.evaluate_step(run, data, cpu)
    assert counted, "the first evaluation measured nothing"
    counted.clear()
    again = pipeline.evaluate_step(run, data, cpu)
    assert counted == []
    assert again["models"] == first["models"] and again["verdicts"] == first["verdicts"]


@pytest.mark.slow
def test_a_changed_checkpoint_is_measured_again_and_only_it(run_copy: Path, counted: list[int]) -> None:
    run = runs.open_run(run_copy)
    data, cpu = run_data.load_data(run), torch.device("cpu")
    first = pipeline.evaluate_step(run, data, cpu)
    per_model = len(counted) // len(run_models.models_in(run))
    counted.clear()
    pipeline.refine_step(run, data, cpu, overrides={"method": "exbl", "epochs": 1, "lr": 1e-2})  # a new refined-exbl.pt
    again = pipeline.evaluate_step(run, data, cpu)
    assert len(counted) == per_model  # the refined model only; unrefined kept its entry
    assert again["models"]["unrefined"] == first["models"]["unrefined"]
    assert again["model_keys"]["exbl"] != first["model_keys"]["exbl"]
