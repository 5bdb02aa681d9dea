"""Every checkpoint says what it is, and loading checks it.

A checkpoint records its role (unrefined, oracle or the method), its image size, the
fingerprint of the run's data settings and the run's id. ``run_models.load_model`` refuses a
swapped, foreign or other-size file with one line naming it (exit 2 in the CLI); a
checkpoint written before these were recorded still loads, with a notice.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from exbl_core import checkpoints, cli, errors, files, run_models, runs
from exbl_core.model import build_model

TINY = ("--quick", "--size", "32", "--per-class", "2", "2", "2")
EXBL, SWAP = runs.refined_file("exbl"), runs.refined_file("region-swap")


@pytest.fixture(scope="module")
def two_methods(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run refined with eXBL and with region-swap."""
    path = tmp_path_factory.mktemp("identity") / "run"
    assert cli.main(["train", "--run", str(path), *TINY, "--epochs", "1"]) == 0
    assert cli.main(["pick", "--run", str(path), "--good", "0", "--bad", "1"]) == 0
    for method in ("exbl", "region-swap"):
        assert cli.main(["refine", "--run", str(path), "--method", method, "--epochs", "1"]) == 0
    return path


@pytest.fixture
def run_copy(two_methods: Path, tmp_path: Path) -> Path:
    """A copy keeps the run's id, so its checkpoints load as they are."""
    return Path(shutil.copytree(two_methods, tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))


def _edit_config(run_path: Path, **changes) -> None:
    config = files.read_json(run_path / runs.CONFIG)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config[section][field] = value
        else:
            config[section] = value
    files.write_json(run_path / runs.CONFIG, config)


def _refused(capsys, run_path: Path) -> str:
    code = cli.main(["evaluate", "--run", str(run_path)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    return errors[0]


def test_each_checkpoint_records_its_role_size_data_and_run(run_copy):
    config = files.read_json(run_copy / runs.CONFIG)
    assert len(config["run_id"]) == 16
    for which in ("unrefined", "exbl", "region-swap"):
        meta = checkpoints.load_checkpoint(run_copy / run_models.model_file(which), build_model(num_classes=4))
        assert meta["role"] == which and meta["image_size"] == 32
        assert meta["run_id"] == config["run_id"] and meta["data_sha256"] == run_models.data_fingerprint(config["data"])


def test_a_copied_run_keeps_its_id_and_loads_every_model_without_a_notice(two_methods, run_copy, caplog):
    assert files.read_json(run_copy / runs.CONFIG)["run_id"] == files.read_json(two_methods / runs.CONFIG)["run_id"]
    with caplog.at_level(logging.WARNING):
        for which in run_models.models_in(runs.open_run(run_copy)):
            run_models.load_model(runs.open_run(run_copy), which)
    assert "cannot be checked" not in caplog.text


def test_every_new_run_gets_its_own_id(tmp_path):
    ids = {runs.create_run(tmp_path / name, {}).config()["run_id"] for name in ("a", "b", "c")}
    assert len(ids) == 3


def test_a_swapped_checkpoint_is_refused_naming_the_file_and_the_model_it_holds(run_copy, capsys):
    shutil.copy(run_copy / SWAP, run_copy / EXBL)
    metrics = (run_copy / runs.METRICS).read_bytes() if (run_copy / runs.METRICS).exists() else None
    with pytest.raises(errors.CheckpointError, match=rf"{EXBL}: it holds the region-swap model, not the exbl model"):
        run_models.load_model(runs.open_run(run_copy), "exbl")
    assert f"{EXBL}: it holds the region-swap model, not the exbl model" in _refused(capsys, run_copy)
    assert ((run_copy / runs.METRICS).read_bytes() if (run_copy / runs.METRICS).exists() else None) == metrics, "evaluate wrote nothing"


def test_the_unrefined_model_in_a_refined_models_file_is_refused(run_copy):
    shutil.copy(run_copy / runs.UNREFINED, run_copy / EXBL)
    with pytest.raises(errors.CheckpointError, match="it holds the unrefined model, not the exbl model"):
        run_models.load_model(runs.open_run(run_copy), "exbl")


def test_another_runs_checkpoint_is_refused(run_copy, capsys):
    _edit_config(run_copy, run_id="0123456789abcdef")  # as if the checkpoints came from another run
    line = _refused(capsys, run_copy)
    assert f"{runs.UNREFINED}: it was trained in another run" in line and "this run's is 0123456789abcdef" in line


def test_a_checkpoint_trained_on_other_data_settings_is_refused(run_copy, capsys):
    config = files.read_json(run_copy / runs.CONFIG)
    _edit_config(run_copy, data__viral_strength=config["data"]["viral_strength"] + 1)
    line = _refused(capsys, run_copy)
    assert f"{runs.UNREFINED}: it was trained on other data settings than this run's config.json" in line


def test_a_checkpoint_of_another_image_size_is_refused(run_copy, capsys):
    _edit_config(run_copy, data__size=64)
    line = _refused(capsys, run_copy)
    assert f"{runs.UNREFINED}:" in line and "it is for 32 px images, this run's are 64 px" in line


def test_a_checkpoint_from_before_identities_loads_with_a_notice(run_copy, caplog):
    model = build_model(num_classes=4)
    meta = checkpoints.load_checkpoint(run_copy / EXBL, model)
    old = {k: v for k, v in meta.items() if k not in ("role", "run_id", "data_sha256", "format", "version", "arch", "classes")}
    checkpoints.save_checkpoint(run_copy / EXBL, model.state_dict(), old)
    with caplog.at_level(logging.WARNING, logger="exbl_core.pipeline"):
        run_models.load_model(runs.open_run(run_copy), "exbl")
    notices = [r.getMessage() for r in caplog.records if "cannot be checked" in r.getMessage()]
    assert len(notices) == 1 and EXBL in notices[0]


def test_a_run_from_before_run_ids_still_loads_its_checkpoints(run_copy):
    config = files.read_json(run_copy / runs.CONFIG)
    del config["run_id"]
    files.write_json(run_copy / runs.CONFIG, config)
    model = build_model(num_classes=4)
    meta = checkpoints.load_checkpoint(run_copy / EXBL, model)
    checkpoints.save_checkpoint(run_copy / EXBL, model.state_dict(), {**meta, "run_id": None})
    run_models.load_model(runs.open_run(run_copy), "exbl")
    with pytest.raises(errors.CheckpointError, match="trained in another run"):
        run_models.load_model(runs.open_run(run_copy), "unrefined")  # it names a run id this run does not have
