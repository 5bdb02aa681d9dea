"""The per-epoch curve of a refinement: its last point is the refined model the run keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from exbl_core import assets, run_data, runs
from experiments import refine_epochs
from tests.conftest import example_preset


@pytest.mark.slow
def test_the_last_point_of_the_curve_is_the_model_the_refinement_keeps(shipped_example: Path, tmp_path: Path) -> None:
    tiny = example_preset()
    source = run_data.new_run(tmp_path / "seed-0", tiny.data, tiny.train, tiny.refine, "random")
    with runs.locked(source.path):
        assets.install(source)
    result = refine_epochs.curve(source.path, tmp_path / "out", "region-swap")
    epochs = result["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1)) and len(epochs) >= 2  # region-swap's longer schedule
    work = runs.open_run(tmp_path / "out" / "seed-0-run")
    kept = refine_epochs.accuracies(work, "region-swap", run_data.load_data(work))
    best = [e for e in epochs if e["best"]][-1]
    assert {k: best[k] for k in kept} == kept
    assert (tmp_path / "out" / "seed-0.json").is_file() and "| 1 |" in refine_epochs.report(tmp_path / "out")
    with pytest.raises(SystemExit, match="already exists"):  # a second curve into the same folder replaces nothing
        refine_epochs.curve(source.path, tmp_path / "out", "region-swap")
