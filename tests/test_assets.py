"""The shipped example: ``assets build`` and ``assets check``, the demo starting from it, and what breaks it.

A tiny example (32 px, one epoch; conftest's ``tiny_example``) is built once with the default
demo's preset swapped for a tiny one; every test changes a copy of it, never ``assets/``.
One test checks the committed ``assets/`` themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from exbl_core import assets, cli, config, errors, evaluation, files, pipeline, run_data, run_models, runs
from tests.conftest import example_preset

TINY = example_preset()


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def refused(folder: Path, *words: str, fix: str = assets.BUILD_COMMAND) -> str:
    """``assets check`` on ``folder`` exits 2 with one line naming what is wrong and the command to run."""
    code, out, err = run_cli("assets", "check", "--dir", str(folder))
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fix in lines[0]
    for word in words:
        assert word in lines[0]
    return lines[0]


def test_check_passes_on_what_build_made_and_reports_the_figures(shipped_example: Path) -> None:
    manifest = json.loads((shipped_example / assets.MANIFEST).read_text())
    assert manifest["command"] == assets.BUILD_COMMAND and manifest["seconds"] > 0
    assert manifest["settings"] == assets.shipped_settings()
    assert set(manifest["files"]) == {"unrefined", "oracle"}
    code, out, err = run_cli("assets", "check", "--dir", str(shipped_example))
    assert code == 0, err
    assert "intact" in out and "unrefined: test accuracy" in out and "oracle: test accuracy" in out


def test_assets_are_fp16_and_load_with_weights_only(shipped_example: Path) -> None:
    payload = torch.load(shipped_example / "unrefined.pt", weights_only=True)
    floats = [v for v in payload["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)


def test_build_is_deterministic_on_the_cpu(tiny_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEMO", TINY)
    again = tmp_path / "again"
    code, _, err = run_cli("assets", "build", "--dir", str(again))
    assert code == 0, err
    files = ("unrefined.pt", "oracle.pt")
    assert {f: hashes(again)[f] for f in files} == {f: hashes(tiny_example)[f] for f in files}


def test_build_refuses_to_replace_the_example_without_overwrite(shipped_example: Path) -> None:
    before = hashes(shipped_example)
    code, out, err = run_cli("assets", "build", "--dir", str(shipped_example))
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert hashes(shipped_example) == before


def test_build_refuses_a_folder_holding_a_metrics_json_it_did_not_make(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"mine": true}')
    code, out, err = run_cli("assets", "build", "--dir", str(folder))
    assert code == 2 and "metrics.json" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (folder / "metrics.json").read_text() == '{"mine": true}'


def test_a_changed_byte_fails_check(shipped_example: Path) -> None:
    data = bytearray((shipped_example / "oracle.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (shipped_example / "oracle.pt").write_bytes(bytes(data))
    refused(shipped_example, "oracle.pt", "SHA-256")


def test_a_missing_file_fails_check(shipped_example: Path) -> None:
    (shipped_example / "unrefined.pt").unlink()
    refused(shipped_example, "unrefined.pt", "missing")


def test_a_truncated_file_fails_check(shipped_example: Path) -> None:
    data = (shipped_example / "unrefined.pt").read_bytes()
    (shipped_example / "unrefined.pt").write_bytes(data[: len(data) // 3])
    refused(shipped_example, "unrefined.pt")


def test_a_missing_manifest_fails_check(shipped_example: Path) -> None:
    (shipped_example / assets.MANIFEST).unlink()
    refused(shipped_example, assets.MANIFEST)


def test_a_manifest_made_for_other_settings_fails_check(shipped_example: Path) -> None:
    manifest = json.loads((shipped_example / assets.MANIFEST).read_text())
    manifest["settings"]["data"]["seed"] = 1
    (shipped_example / assets.MANIFEST).write_text(json.dumps(manifest))
    refused(shipped_example, assets.MANIFEST, "other data or training settings")


def test_figures_that_no_longer_match_fail_check(shipped_example: Path) -> None:
    manifest = json.loads((shipped_example / assets.MANIFEST).read_text())
    manifest["figures"]["unrefined"]["test_accuracy"] += 0.1
    (shipped_example / assets.MANIFEST).write_text(json.dumps(manifest))
    refused(shipped_example, "unrefined.pt", "re-measured test_accuracy")


def test_install_writes_checkpoints_that_pass_the_runs_identity_checks(shipped_example: Path, tmp_path: Path) -> None:
    before = hashes(shipped_example)
    run = run_data.new_run(tmp_path / "run", TINY.data, TINY.train, TINY.refine, "random")
    with runs.locked(run.path):
        assets.install(run)
    for role in ("unrefined", "oracle"):
        model = run_models.load_model(run, role)  # checks role, run id, data and image size
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert hashes(shipped_example) == before  # the assets were only read


def test_a_changed_byte_of_the_shipped_metrics_fails_check(shipped_example: Path) -> None:
    text = (shipped_example / runs.METRICS).read_text()
    (shipped_example / runs.METRICS).write_text(text.replace('"accuracy": ', '"accuracy":  ', 1))
    refused(shipped_example, "metrics.json", "SHA-256", fix=assets.EVALUATE_COMMAND)


def test_metrics_of_other_evaluation_code_fail_check_stay_out_of_runs_and_evaluate_renews_them(
    shipped_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluation, "evaluation_code", lambda: "0" * 64)  # as after an edit of metrics.py
    refused(shipped_example, "metrics.json", "other evaluation code", fix=assets.EVALUATE_COMMAND)
    run = run_data.new_run(tmp_path / "run", TINY.data, TINY.train, TINY.refine, "random")
    with runs.locked(run.path):
        assets.install(run)
    assert run.has(runs.UNREFINED) and not run.has(runs.METRICS)  # a page must not show what no longer applies
    code, out, err = run_cli("assets", "evaluate", "--dir", str(shipped_example))
    assert code == 0 and "metrics.json" in out, err
    code, out, err = run_cli("assets", "check", "--dir", str(shipped_example))
    assert code == 0 and "metrics.json is current" in out, err


def test_a_run_opened_from_the_example_never_measures_its_unrefined_model_and_oracle(
    shipped_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_data.new_run(tmp_path / "run", TINY.data, TINY.train, TINY.refine, "random")
    with runs.locked(run.path):
        assets.install(run)
    measured: list[int] = []
    monkeypatch.setattr(evaluation, "measure", lambda *args: measured.append(1))
    metrics = pipeline.evaluate_step(run, run_data.load_data(run), torch.device("cpu"))
    assert measured == []  # the installed checkpoints are new files of this run, but the same weights
    shipped = json.loads((shipped_example / runs.METRICS).read_text())
    assert metrics["models"] == shipped["models"] and metrics["model_keys"] == shipped["model_keys"]


def test_install_refuses_a_run_with_other_settings(shipped_example: Path, tmp_path: Path) -> None:
    run = run_data.new_run(tmp_path / "run", replace(TINY.data, seed=3), TINY.train, TINY.refine, "random")
    with pytest.raises(errors.RunError, match="differ from the shipped example"):
        assets.install(run)
    assert not run.has(runs.UNREFINED)


@pytest.mark.slow
def test_the_demo_starts_from_the_example_and_says_so(shipped_example: Path, tmp_path: Path) -> None:
    before = hashes(shipped_example)
    code, out, err = run_cli("demo", "--out", str(tmp_path / "run"))
    assert code == 0, err
    shipped = [line for line in out.splitlines() if "shipped example" in line]
    assert len(shipped) == 1 and "--from-scratch" in shipped[0]
    assert "unrefined epoch" not in out + err  # nothing was trained before refinement
    run = runs.open_run(tmp_path / "run")
    assert run.has(runs.ORACLE) and run.has(runs.FIGURE3)
    assert "oracle" in files.read_json(run.file(runs.METRICS))["models"]
    assert hashes(shipped_example) == before


@pytest.mark.slow
def test_the_demo_from_scratch_trains(shipped_example: Path, tmp_path: Path) -> None:
    code, out, err = run_cli("demo", "--from-scratch", "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "shipped example" not in out and "unrefined epoch" in out + err


@pytest.mark.slow
def test_a_broken_example_makes_the_demo_train_with_a_notice(shipped_example: Path, tmp_path: Path) -> None:
    (shipped_example / "oracle.pt").write_bytes(b"not a model")
    code, out, err = run_cli("demo", "--out", str(tmp_path / "run"))
    assert code == 0, err
    notices = [line for line in err.splitlines() if line.startswith("notice: ")]
    assert len(notices) == 1 and "oracle.pt" in notices[0] and "training from scratch" in notices[0]
    assert "unrefined epoch" in out + err


@pytest.mark.slow
def test_the_committed_assets_pass_check() -> None:
    """``assets/`` as committed: hashes, a safe load, and the figures re-measured on regenerated phantoms."""
    code, out, err = run_cli("assets", "check")
    assert code == 0, err
    assert "intact" in out
    sizes = sum(p.stat().st_size for p in assets.ASSETS_DIR.iterdir())
    assert sizes < 12 * 2**20
