"""A study records its preset and settings, and refuses a resume with other ones.

study.json holds the preset's name (and the quick flag), its data, training and refinement
settings and the methods, from before the first seed starts. Resuming the same --out with
other settings (a quick study resumed without --quick) is one line naming what differs,
exit 2, and touches nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exbl_core import cli, config, study

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
