"""Training and refinement settings are two types: ``TrainConfig`` (the training loop's) and
``RefineConfig`` (those, the method and its term's). Settings written before the split (a
config.json's, a study's, the shipped manifest's ``train`` section holding the refinement
settings too) keep opening, training and matching."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from exbl_core import assets, cli, config, errors, files, pipeline, run_data, runs, study
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.data import CLASSES
from exbl_core.methods import Batch
from exbl_core.methods.exbl import Exemplars, triplet_objective
from exbl_core.model import build_model
from exbl_core.synthetic import SyntheticConfig
from exbl_core.training import _batch_losses

# A train section as config.json held it before the split: the refinement settings, which training never read, included.
OLD_TRAIN = {
    **TrainConfig(epochs=1, lr=1e-3, batch_size=8).to_dict(),
    "method": "exbl",
    "lambda_expl": None,
    "margin": 1.0,
    "distance": "euclidean",
    "explanation": "gray_cam",
}


def test_training_settings_hold_no_refinement_setting_and_refinement_settings_hold_both():
    train, refine = {f.name for f in fields(TrainConfig)}, {f.name for f in fields(RefineConfig)}
    assert config.REFINEMENT_ONLY == {"method", "lambda_expl", "margin", "distance", "explanation"}
    assert train == refine - config.REFINEMENT_ONLY and "tau" in train, "validation AP reads tau in training too"
    assert not config.REFINEMENT_ONLY & set(TrainConfig().to_dict())
    with pytest.raises(TypeError, match="method"):
        TrainConfig(method="exbl")
    assert isinstance(RefineConfig(), TrainConfig) and RefineConfig() != TrainConfig()
    assert config.DEMO.refine == RefineConfig(epochs=3) and type(config.DEMO.train) is TrainConfig


def test_each_type_refuses_its_own_settings_in_one_line():
    with pytest.raises(ValueError, match=r"^invalid training setting\(s\): epochs=0$"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"^invalid training setting\(s\): epochs=0, margin=-1.0$"):
        RefineConfig(epochs=0, margin=-1.0)
    assert config.refused("margin", -1.0) == config.RULES["margin"] and config.refused("epochs", 0) == config.RULES["epochs"]
    assert config.refused("margin", 2.0) is None and config.refused("lambda_expl", 0.5) is None


def test_from_dict_drops_only_refinement_settings_from_a_training_section():
    assert TrainConfig.from_dict(OLD_TRAIN) == TrainConfig(epochs=1, lr=1e-3, batch_size=8)
    assert RefineConfig.from_dict({**OLD_TRAIN, "margin": 2.0}).margin == 2.0, "a refinement section keeps them"
    with pytest.raises(TypeError, match="mystery"):
        TrainConfig.from_dict({**OLD_TRAIN, "mystery": 1})
    with pytest.raises(TypeError, match="epochs is true"):
        TrainConfig.from_dict({**OLD_TRAIN, "epochs": True})


def test_a_term_under_training_settings_is_refused_rather_than_weighted_by_a_guess():
    torch.manual_seed(0)
    model = build_model(num_classes=len(CLASSES))
    batch = Batch(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
    objective = triplet_objective(Exemplars(torch.ones(32 * 32), torch.zeros(32 * 32)), "gray_cam", "euclidean", 1.0)
    with pytest.raises(TypeError, match="RefineConfig"):
        _batch_losses(model, batch, TrainConfig(), objective, training=True)
    out = _batch_losses(model, batch, RefineConfig(lambda_expl=2.0), objective, training=True)
    assert torch.allclose(out["loss"], out["ce"] + 2.0 * out["expl"])


def _old_style(path: Path) -> dict:
    """Rewrite a run's config.json as it was written before the split; returns the new document."""
    doc = files.read_json(path / runs.CONFIG)
    doc["train"] = {**OLD_TRAIN, **doc["train"]}
    (path / runs.CONFIG).write_text(json.dumps(doc))
    return doc


def test_a_run_folder_written_before_the_split_opens_and_trains(tmp_path):
    spec = SyntheticConfig(size=32, n_train=2, n_val=1, n_test=1)
    run = run_data.new_run(tmp_path / "old", spec, TrainConfig(epochs=1, batch_size=8), RefineConfig(epochs=1, batch_size=8))
    assert not config.REFINEMENT_ONLY & set(run.config()["train"]), "a new run writes training settings only"
    doc = _old_style(run.path)
    run = run_data.check_config(runs.open_run(run.path))
    assert run_data.train_config(run, "train") == TrainConfig(epochs=1, batch_size=8)
    assert run_data.train_config(run, "refine") == RefineConfig.from_dict(doc["refine"])
    assert pipeline.train_step(run, run_data.load_data(run), torch.device("cpu")).status == "done"


def test_a_run_folder_written_before_the_split_is_not_restarted_by_train(tmp_path, capsys):
    folder = tmp_path / "old"
    spec = SyntheticConfig(size=32, n_train=2, n_val=1, n_test=1)
    run_data.new_run(folder, spec, TrainConfig(epochs=1, batch_size=8), RefineConfig(epochs=1, batch_size=8))
    _old_style(folder)
    run_id = files.read_json(folder / runs.CONFIG)["run_id"]
    assert cli.main(["train", "--run", str(folder)]) == 0, capsys.readouterr().err
    assert files.read_json(folder / runs.CONFIG)["run_id"] == run_id, "the same settings: the run trains, not starts over"


def test_an_unknown_key_in_a_training_section_is_still_refused_in_one_line(tmp_path):
    spec = SyntheticConfig(size=32, n_train=2, n_val=1, n_test=1)
    run = run_data.new_run(tmp_path / "run", spec, TrainConfig(epochs=1), RefineConfig(epochs=1))
    doc = _old_style(run.path)
    doc["train"]["mystery"] = 1
    (run.path / runs.CONFIG).write_text(json.dumps(doc))
    with pytest.raises(errors.RunError, match="its 'train' settings are not valid .*mystery"):
        run_data.check_config(runs.open_run(run.path))


def test_the_committed_manifest_from_before_the_split_matches_a_new_run_with_the_shipped_settings(tmp_path):
    manifest = assets.read_manifest()  # assets/manifest.json as committed
    assert config.REFINEMENT_ONLY <= set(manifest["settings"]["train"]), "it was written before the split"
    run = run_data.new_run(tmp_path / "run", config.DEMO.data, config.DEMO.train, config.DEMO.refine, "random")
    assert assets.matches(run.config())
    assert not assets.matches({**run.config(), "train": {**OLD_TRAIN, "epochs": 15, "lr": 1e-3}}), "a real difference still counts"
    assert not assets.matches({**run.config(), "train": "not settings"})


def test_a_study_started_before_the_split_resumes_and_one_with_other_training_settings_does_not(tmp_path):
    settings = study.study_settings("quick", config.QUICK, ["exbl"])
    out = tmp_path / "study"
    out.mkdir()
    old = {**settings, "train": {**settings["train"], **{k: v for k, v in OLD_TRAIN.items() if k in config.REFINEMENT_ONLY}}}
    files.write_json(out / study.STUDY_JSON, {"format": study.STUDY_FORMAT, "settings": old, "rows": []})
    study.check_resume(out, settings)
    files.write_json(out / study.STUDY_JSON, {"format": study.STUDY_FORMAT, "settings": {**old, "train": {**old["train"], "lr": 0.5}}})
    with pytest.raises(study.StudyError, match=r"train\.lr 0\.5 -> 0\.001"):
        study.check_resume(out, settings)
