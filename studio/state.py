"""Which run the user is working on, and the good/bad pair they marked: per browser session.

The current run survives a page reload: with nothing chosen in this session, it is the
run a background job is working on, or else the newest run on disk. So a teacher who
reopens the tab finds the class's run where it was.
"""

from __future__ import annotations

import streamlit as st

from exbl_core import errors, explainers, faithfulness, files, run_models, runs
from exbl_core.figures import EXPLAINER_LABELS
from studio import cache
from studio.jobs import get_runner

SIDES = ("good", "bad")
USER_RULE = "user"  # pair.json's rule for a pair marked by hand
SUGGEST_RULE = (
    "suggested from occlusion maps: among a seeded sample of correctly classified training images, the one with the "
    "least of its map on the lungs is bad; the one of the same class with the most is good"
)


def current_run() -> runs.Run | None:
    """The run this session works on, or None when there is none yet."""
    chosen = st.session_state.get("run_path")
    job = get_runner().job
    for path in (chosen, job.run_path if job is not None and job.running else None):
        if path:
            try:
                return runs.open_run(path)
            except errors.RunError:
                continue
    found = runs.list_runs(cache.runs_dir())
    return found[0] if found else None


def select_run(run: runs.Run) -> None:
    st.session_state["run_path"] = str(run.path)


def _saved(run: runs.Run) -> dict:
    """The run's pair.json, or nothing when no pair was saved yet."""
    return files.read_json(run.file(runs.PAIR)) if run.has(runs.PAIR) else {}


def pair(run: runs.Run) -> dict[str, int | None]:
    """The marked pair for this run: starts from the saved pair.json when there is one."""
    picks = st.session_state.setdefault("picks", {})
    key = str(run.path)
    if key not in picks:
        saved = _saved(run)
        picks[key] = {side: saved[side]["index"] if side in saved else None for side in SIDES}
    return picks[key]


def _how(run: runs.Run) -> dict:
    """How the pair was marked: the explainer shown at each mark, and the rule that pair.json will record.

    Kept beside ``pair`` rather than in it, so that ``pair`` stays side -> index for every
    page. Starts from the saved pair.json, whose pair was judged on its "explainer".
    """
    hows = st.session_state.setdefault("pick_how", {})
    key = str(run.path)
    if key not in hows:
        saved = _saved(run)
        shown = saved.get("explainer", "gradcam")
        hows[key] = {"shown": {side: shown for side in SIDES if side in saved}, "rule": saved.get("rule", USER_RULE)}
    return hows[key]


def mark(run: runs.Run, side: str, index: int, explainer: str = "gradcam") -> str | None:
    """Mark ``index`` as the good or bad example, judged on ``explainer``'s map, or unmark it if it already is.

    Returns the reason when the mark is refused: one image cannot be both good and bad.
    """
    p, how = pair(run), _how(run)
    other = "bad" if side == "good" else "good"
    if p[other] == index and p[side] != index:
        return f"Image #{index} is already marked {other}: one image cannot be both. Unmark it first, or pick another image as {side}."
    how["rule"] = USER_RULE  # a hand-made change: the pair is no longer the suggestion
    if p[side] == index:
        p[side] = None
        how["shown"].pop(side, None)
        return None
    p[side] = index
    how["shown"][side] = explainer
    return None


def set_pair(run: runs.Run, good: int, bad: int, explainer: str = "gradcam", rule: str = USER_RULE) -> None:
    """Replace the pair (a suggestion), both judged on ``explainer``'s maps and chosen by ``rule``."""
    pair(run).update(good=good, bad=bad)
    _how(run).update(shown=dict.fromkeys(SIDES, explainer), rule=rule)


def marked_on(run: runs.Run, side: str) -> str:
    """The explainer whose map was shown when ``side`` was marked (GradCAM for a pair saved before explainers)."""
    return _how(run)["shown"].get(side, "gradcam")


def pair_explainer(run: runs.Run) -> str:
    """The explainer pair.json records for the pair: the faithful one (occlusion) when either mark was made on it.

    The rule: one mark made on occlusion means the judgement used what the model uses, so
    the record says so; otherwise the pair was judged on GradCAM alone, the bad mark's maps.
    """
    shown = [marked_on(run, side) for side in SIDES]
    return explainers.FAITHFUL if explainers.FAITHFUL in shown else marked_on(run, "bad")


def pair_rule(run: runs.Run) -> str:
    """How the pair was chosen: the suggestion's rule while it is unchanged, else "user"."""
    return _how(run)["rule"]


def forget_pair(run: runs.Run) -> None:
    """Drop the marks after retraining: they described the old model's explanations."""
    st.session_state.setdefault("picks", {}).pop(str(run.path), None)
    st.session_state.setdefault("pick_how", {}).pop(str(run.path), None)


def pair_words(pair: dict | None) -> str:
    """A refined model's pair as a reader says it: "good #3 (Viral Pneumonia), bad #8 (Viral Pneumonia), judged on GradCAM maps"."""
    if pair is None:
        return "pair not recorded (refined before models recorded their pair)"
    judged = EXPLAINER_LABELS.get(pair.get("explainer", "gradcam"), pair.get("explainer", "gradcam"))
    good, bad = pair["good"], pair["bad"]
    return f"good #{good['index']} ({good['class']}), bad #{bad['index']} ({bad['class']}), judged on {judged} maps"


def pair_key(pair: dict | None) -> tuple[int, int, str] | None:
    """What makes two pairs the same: both images and the maps they were judged on."""
    return None if pair is None else (pair["good"]["index"], pair["bad"]["index"], pair.get("explainer", "gradcam"))


FIGURE_MAX_ROWS = 8  # more rows make Figure 3 too tall to compare, and slow to draw


def figure_rows(run: runs.Run, split: str) -> list[int] | None:
    """The images chosen for Figure 3 from ``split`` in this session (None: the default rows).

    Kept outside any widget, so that images added on Explore reach Compare's picker, and the
    choice survives page switches (Streamlit drops the widget state of a page not drawn).
    """
    return st.session_state.setdefault("figure_rows", {}).get((str(run.path), split))


def set_figure_rows(run: runs.Run, split: str, rows: list[int]) -> None:
    st.session_state.setdefault("figure_rows", {})[(str(run.path), split)] = list(rows)


def toggle_figure_row(run: runs.Run, split: str, index: int, default: list[int]) -> str | None:
    """Put image ``index`` into Figure 3 (starting from ``default``, the rows Compare preselects), or take it out.

    Returns the reason when the figure is full. Nothing here marks an exemplar: the pair
    stays on training images, whatever is shown in the figure.
    """
    rows = figure_rows(run, split)
    rows = list(default if rows is None else rows)
    if index in rows:
        rows.remove(index)
    elif len(rows) >= FIGURE_MAX_ROWS:
        return f"Figure 3 holds at most {FIGURE_MAX_ROWS} images: take one out first (here or on Compare)."
    else:
        rows.append(index)
    set_figure_rows(run, split, rows)
    return None


def current_metrics(run: runs.Run) -> dict | None:
    """metrics.json when it describes every model of the run; None when missing, older than one, or incomplete.

    A refinement rewrites its checkpoint at every new best epoch and evaluates only when
    it ends, so after a cancel the metrics describe an older model and no view may show them.
    """
    if not (run.has(runs.METRICS) and run_models.refined(run)):
        return None
    names = run_models.models_in(run)
    if run.file(runs.METRICS).stat().st_mtime < max(run.file(run_models.model_file(m)).stat().st_mtime for m in names):
        return None
    metrics = files.read_json(run.file(runs.METRICS))
    return metrics if all(m in metrics.get("models", {}) for m in names) else None


def saved_pair(run: runs.Run) -> tuple[int, int, float] | None:
    """``(good, bad, time)`` of the pair the latest refinement started with (pair.json), or None."""
    if not run.has(runs.PAIR):
        return None
    saved = files.read_json(run.file(runs.PAIR))
    return saved["good"]["index"], saved["bad"]["index"], run.file(runs.PAIR).stat().st_mtime


def disagreement(run: runs.Run, metrics: dict | None = None) -> str | None:
    """The sentence saying GradCAM and occlusion disagree about the shortcut, or None.

    Read from the unrefined model's shortcut-test entry of ``metrics`` (metrics.json when
    not given, and only while it is not older than the unrefined model it describes).
    """
    if metrics is None:
        if not (run.has(runs.METRICS) and run.has(runs.UNREFINED)):
            return None
        if run.file(runs.METRICS).stat().st_mtime < run.file(runs.UNREFINED).stat().st_mtime:
            return None
        metrics = files.read_json(run.file(runs.METRICS))
    entry = metrics.get("models", {}).get("unrefined", {}).get("shortcut_test")
    return None if entry is None else faithfulness.disagreement(entry)
