"""The study (docs/design.md section 11): its rows, summaries and files, and what it refuses.

A study records its preset and settings, and refuses a resume with other ones: study.json
holds the preset's name (and the quick flag), its data, training and refinement settings
and the methods, from before the first seed starts. Resuming the same --out with other
settings (a quick study resumed without --quick) is one line naming what differs, exit 2,
and touches nothing.

Every test that uses the finished quick study (``quick_study``) is in this file: ``make test``
gives a file to one pytest-xdist worker, so the study runs once (tests/conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exbl_core import cli, config, study
from exbl_core.study import StudyError, check_request, study_markdown, study_rows, summarise


def _metrics(st: dict[str, float], test: float = 0.95) -> dict:
    models = {
        name: {"test": {"accuracy": test, "activation_precision": 0.5}, "shortcut_test": {"accuracy": acc, "child_cp": 0.4}}
        for name, acc in st.items()
    }
    return {"models": models, "verdicts": {"exbl": {"label": "not unlearned"}}}


def test_recovered_is_the_share_of_the_oracles_gain_won_back():
    rows = study_rows(0, _metrics({"unrefined": 0.6, "oracle": 0.9, "exbl": 0.75}), ["exbl"])
    by_model = {r["model"]: r for r in rows}
    assert by_model["exbl"]["recovered"] == pytest.approx(0.5)
    assert by_model["unrefined"]["recovered"] is None and by_model["oracle"]["feedback"] == "none"
    assert by_model["exbl"]["feedback"] == "two-clicks" and by_model["exbl"]["verdict"] == "not unlearned"


def test_recovered_is_left_empty_when_the_unrefined_model_hardly_used_the_shortcut():
    rows = study_rows(0, _metrics({"unrefined": 0.98, "oracle": 0.99, "exbl": 0.995}), ["exbl"])
    assert rows[-1]["recovered"] is None


def test_summaries_are_medians_with_ranges_over_seeds():
    rows = []
    for seed, acc in enumerate((0.7, 0.9, 0.8)):
        rows += study_rows(seed, _metrics({"unrefined": 0.6, "oracle": 1.0, "exbl": acc}), ["exbl"])
    exbl = next(s for s in summarise(rows) if s["model"] == "exbl")
    assert exbl["shortcut_test_accuracy"] == pytest.approx((0.8, 0.7, 0.9))
    assert exbl["recovered"] == pytest.approx((0.5, 0.25, 0.75))
    assert exbl["verdicts"] == {"not unlearned": 3}
    assert "| exbl | two-clicks | 0.950 [0.950, 0.950] | 0.800 [0.700, 0.900]" in study_markdown(rows)


@pytest.mark.parametrize(
    ("seeds", "methods", "message"),
    [([0, 0], ["exbl"], "a seed is listed twice"), ([0], ["nope"], "unknown method 'nope'"), ([0], ["exbl", "exbl"], "listed twice")],
)
def test_bad_requests_are_refused_before_anything_is_written(tmp_path, seeds, methods, message):
    out = tmp_path / "study"
    with pytest.raises(ValueError, match=message):
        check_request(out, seeds, methods)
    assert not out.exists()


def test_a_folder_with_foreign_files_is_refused_and_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="holds files the study did not write"):
        check_request(tmp_path, [0], ["exbl"])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exbl_core", *args], capture_output=True, text=True, cwd=cwd, timeout=900)


def test_quick_study_writes_its_files_and_resumes_without_retraining(quick_study, study_copy):
    repo = Path(__file__).resolve().parents[1]
    saved = json.loads((study_copy / study.STUDY_JSON).read_text())
    assert saved["seeds"] == [0]
    assert [r["model"] for r in saved["rows"]] == ["unrefined", "oracle", *quick_study.methods]
    for row in saved["rows"]:
        assert set(row) >= {"seed", "model", "feedback", "test_accuracy", "shortcut_test_accuracy", "test_ap", "child_cp", "recovered"}
    assert (study_copy / study.STUDY_MD).read_text().startswith("Medians over seeds 0")
    assert (study_copy / study.STUDY_PNG).read_bytes()[:4] == b"\x89PNG"
    checkpoint = study_copy / "seed-0" / "unrefined.pt"
    stamp = checkpoint.stat().st_mtime_ns
    again = _cli("study", "--out", str(study_copy), "--seeds", "0", "--methods", *quick_study.methods, "--quick", cwd=repo)
    assert again.returncode == 0, again.stderr[-2000:]
    assert checkpoint.stat().st_mtime_ns == stamp, "a finished seed was trained again"
    assert "training" not in again.stdout


@pytest.mark.slow
def test_the_cli_refuses_duplicate_seeds_with_exit_code_2(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    result = _cli("study", "--out", str(tmp_path / "s"), "--seeds", "1", "1", "--quick", cwd=repo)
    assert result.returncode == 2 and "a seed is listed twice" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- settings and resume


OUT_FILES = (study.STUDY_JSON, study.STUDY_MD, study.STUDY_PNG)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def refused(capsys, *argv: str) -> str:
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture
def started_quick_study(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A --quick study stopped in its first seed, before any training: only study.json exists."""

    def stop(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "seed_run", stop)
    out = tmp_path / "study"
    assert cli.main(["study", "--out", str(out), "--seeds", "0", "--methods", "exbl", "--quick"]) == 130
    capsys.readouterr()
    monkeypatch.undo()
    return out


def test_study_json_records_the_preset_and_its_settings_before_the_first_seed(started_quick_study):
    saved = json.loads((started_quick_study / study.STUDY_JSON).read_text())
    settings = saved["settings"]
    assert settings["preset"] == "quick" and settings["quick"] is True and settings["methods"] == ["exbl"]
    assert settings["data"] == config.QUICK.data.to_dict()
    assert settings["train"] == config.QUICK.train.to_dict() and settings["refine"] == config.QUICK.refine.to_dict()
    assert saved["rows"] == []


def test_resuming_a_quick_study_without_quick_is_refused_naming_what_differs(started_quick_study, capsys):
    before = snapshot(started_quick_study)
    line = refused(capsys, "study", "--out", started_quick_study, "--seeds", "0", "--methods", "exbl")
    assert line.startswith(f"error: {started_quick_study / study.STUDY_JSON}: this study was started with other settings")
    assert "preset quick -> demo" in line and "quick True -> False" in line
    assert snapshot(started_quick_study) == before


def test_resuming_with_other_methods_is_refused(started_quick_study, capsys):
    before = snapshot(started_quick_study)
    line = refused(capsys, "study", "--out", started_quick_study, "--seeds", "0", "--methods", "exbl", "rrr-lungs", "--quick")
    assert "methods ['exbl'] -> ['exbl', 'rrr-lungs']" in line
    assert snapshot(started_quick_study) == before


def test_a_study_json_from_before_settings_were_recorded_is_resumed(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / study.STUDY_JSON).write_text(json.dumps({"format": study.STUDY_FORMAT, "seeds": [], "methods": ["exbl"], "rows": []}))
    study.check_resume(out, study.study_settings("quick", config.QUICK, ["exbl"]))  # nothing to compare: no refusal


def test_a_finished_quick_study_refuses_a_resume_without_quick_and_resumes_with_it(quick_study, study_copy, capsys):
    methods = quick_study.methods
    before = snapshot(study_copy)
    assert json.loads((study_copy / study.STUDY_JSON).read_text())["settings"]["preset"] == "quick"
    line = refused(capsys, "study", "--out", study_copy, "--seeds", "0", "--methods", *methods)
    assert "preset quick -> demo" in line and "data.size 96 -> 128" in line
    assert snapshot(study_copy) == before
    assert cli.main(["study", "--out", str(study_copy), "--seeds", "0", "--methods", *methods, "--quick"]) == 0
    assert "training" not in capsys.readouterr().out, "a finished seed was trained again"


def test_resuming_with_the_pair_picked_on_other_maps_is_refused(started_quick_study, capsys):
    before = snapshot(started_quick_study)
    line = refused(
        capsys, "study", "--out", started_quick_study, "--seeds", "0", "--methods", "exbl", "--quick", "--pick-from", "occlusion"
    )
    assert "pick_from gradcam -> occlusion" in line
    assert snapshot(started_quick_study) == before


def test_a_study_recorded_before_pick_from_existed_resumes_as_a_gradcam_pick(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    settings = study.study_settings("quick", config.QUICK, ["exbl"])
    older = {k: v for k, v in settings.items() if k != "pick_from"}
    (out / study.STUDY_JSON).write_text(
        json.dumps({"format": study.STUDY_FORMAT, "seeds": [], "methods": ["exbl"], "rows": [], "settings": older})
    )
    study.check_resume(out, settings)  # the same study: no refusal
    with pytest.raises(study.StudyError, match="pick_from gradcam -> occlusion"):
        study.check_resume(out, study.study_settings("quick", config.QUICK, ["exbl"], "occlusion"))
