"""The study: every method on the same unrefined models, over several seeds.

One run of this demo has moved AP by +0.08 and by -0.36, so a single run says little
about a method. For each seed the study trains the unrefined model and the oracle,
picks the two exemplars automatically, refines a copy of the unrefined model with
each method, and evaluates them all. Each seed is an ordinary run folder
(``DIR/seed-N``) that the app and the CLI can open; the study adds ``study.json``
(one row per seed and model), ``study.md`` (medians and ranges) and ``study.png``.

Every step is skipped when its result is already on disk, so an interrupted study
resumes where it stopped and finished seeds are kept. study.json records the preset and
its settings, and a resume with other settings is refused before anything is touched.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from exbl_core import config, errors, files, pipeline, run_data, run_models, runs
from exbl_core.data import Split
from exbl_core.figures import lookup
from exbl_core.methods import METHODS, get_method
from exbl_core.verdict import recovered

STUDY_JSON = "study.json"
STUDY_MD = "study.md"
STUDY_PNG = "study.png"
STUDY_FORMAT = "exbl-study"
FIGURES = (
    "test_accuracy",
    "shortcut_test_accuracy",
    "test_ap",
    "child_cp",
    "child_cp_occlusion",
    "deletion_gradcam",
    "deletion_occlusion",
    "recovered",
)

Progress = Callable[[str], None]


class StudyError(ValueError):
    """Settings or a folder the study refuses, before it touches anything."""


def check_request(out: Path, seeds: list[int], methods: list[str]) -> None:
    """Refuse duplicate seeds, unknown methods and a folder holding files the study did not write."""
    for name in methods:
        get_method(name)
    if len(set(methods)) != len(methods):
        raise StudyError(f"a method is listed twice: {' '.join(methods)}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"a seed is listed twice: {' '.join(map(str, seeds))}")
    if any(s < 0 for s in seeds):
        raise StudyError(f"seeds must be non-negative, got {' '.join(map(str, seeds))}")
    if out.exists() and not out.is_dir():
        raise StudyError(f"{out}: exists and is not a folder")
    if out.is_dir():
        ours = {STUDY_JSON, STUDY_MD, STUDY_PNG}
        foreign = [p.name for p in out.iterdir() if p.name not in ours and not _is_seed_run(p)]
        if foreign:
            raise StudyError(f"{out}: holds files the study did not write ({', '.join(sorted(foreign)[:3])}); choose another --out")
        if out.joinpath(STUDY_JSON).is_file() and files.read_json(out / STUDY_JSON).get("format") != STUDY_FORMAT:
            raise StudyError(f"{out / STUDY_JSON}: not a study file; choose another --out")


def study_settings(preset_name: str, preset: config.Preset, methods: list[str], pick_from: str = "gradcam") -> dict:
    """What makes two runs of a study comparable: the preset, its data, training and refinement
    settings (each seed's run replaces only their ``seed``), the methods, and the maps the
    automatic pick reads (``pick_from``)."""
    return {
        "preset": preset_name,
        "quick": preset_name == "quick",
        "methods": list(methods),
        "pick_from": pick_from,
        "data": preset.data.to_dict(),
        "train": preset.train.to_dict(),
        "refine": preset.refine.to_dict(),
    }


def _differences(recorded: dict, now: dict, prefix: str = "") -> list[str]:
    """``key recorded -> now`` for every setting that differs, nested keys joined by dots."""
    out = []
    for key in dict.fromkeys([*recorded, *now]):
        was, new = recorded.get(key), now.get(key)
        if isinstance(was, dict) and isinstance(new, dict):
            out += _differences(was, new, f"{prefix}{key}.")
        elif was != new:
            out.append(f"{prefix}{key} {was} -> {new}")
    return out


def check_resume(out: Path, settings: dict) -> None:
    """Refuse to resume a study in ``out`` with other settings than it was started with, naming what differs.

    A study.json written before studies recorded their settings cannot be checked, and is resumed.
    """
    path = out / STUDY_JSON
    if not path.is_file():
        return
    recorded = files.read_json(path).get("settings")
    if recorded is None:
        return
    recorded = {"pick_from": "gradcam", **recorded}  # studies recorded before the choice existed picked on GradCAM
    recorded = config.comparable(recorded)  # a training section from before it was apart from refinement's holds both
    differ = _differences(recorded, settings)
    if differ:
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise StudyError(
            f"{path}: this study was started with other settings ({'; '.join(differ[:3])}{more}); "
            "resume it with the same ones, or choose another --out"
        )


def find_study(run_path: Path) -> Path | None:
    """The study a run belongs to (its parent folder), else the newest study beside it; None if there is none."""
    parent = run_path.parent
    candidates = [parent] + sorted((p for p in parent.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in candidates if (p / STUDY_MD).is_file() and (p / STUDY_JSON).is_file()), None)


def _is_seed_run(path: Path) -> bool:
    if not (path.is_dir() and path.name.startswith("seed-")):
        return False
    try:
        runs.open_run(path)
    except errors.RunError:
        return False
    return True


def _finished(run: runs.Run, phase: str, method: str | None = None) -> bool:
    """Whether the history says a step ran to its end (an interrupted one has no ``done`` event)."""
    return any(e.get("type") == "done" and e.get("phase") == phase and e.get("method") == method for e in run.history())


def seed_run(
    out: Path,
    seed: int,
    methods: list[str],
    preset: config.Preset,
    device: torch.device,
    progress: Progress,
    pick_from: str = "gradcam",
) -> dict:
    """Train, pick, refine and evaluate one seed in ``out/seed-N``; returns its metrics.json."""
    folder = out / f"seed-{seed}"
    if not _is_seed_run(folder):
        train = replace(preset.train, seed=seed)
        refine = replace(preset.refine, seed=seed)
        run_data.new_run(folder, replace(preset.data, seed=seed), train, refine)
    with runs.locked(folder):
        return _seed_steps(runs.open_run(folder), seed, methods, device, progress, pick_from)


def _seed_steps(run: runs.Run, seed: int, methods: list[str], device: torch.device, progress: Progress, pick_from: str) -> dict:
    """Every step of one seed that is not finished yet, under the run's lock."""
    data: dict[str, Split] = run_data.load_data(run)
    for role in ("unrefined", "oracle"):
        if not (run.has(run_models.model_file(role)) and _finished(run, role)):
            progress(f"seed {seed}: training the {role} model")
            pipeline.train_step(run, data, device, role=role)
    if not run.has(runs.PAIR):
        progress(f"seed {seed}: picking the pair on {pick_from} maps")
        pipeline.pick_step(run, data, device, explainer=pick_from)
    refused = {}
    for name in methods:
        if not (run.has(run_models.model_file(name)) and _finished(run, "refine", name)):
            progress(f"seed {seed}: refining with {name}")
            try:
                pipeline.refine_step(run, data, device, overrides={"method": name})
            except ValueError as exc:  # a method that cannot work with this pick: a result, not a crash
                refused[name] = str(exc)
                progress(f"seed {seed}: {name} refused: {exc}")
    progress(f"seed {seed}: evaluating")
    return {**pipeline.evaluate_step(run, data, device), "refused": refused}


def study_rows(seed: int, metrics: dict, methods: list[str]) -> list[dict]:
    """study.json's rows for one seed: unrefined, oracle, then each method."""
    models = metrics["models"]
    base, oracle = models["unrefined"]["shortcut_test"]["accuracy"], models["oracle"]["shortcut_test"]["accuracy"]
    rows = []
    for name in ["unrefined", "oracle", *methods]:
        feedback = "none" if name in ("unrefined", "oracle") else METHODS[name].feedback
        if name in metrics.get("refused", {}):
            empty = dict.fromkeys(FIGURES)
            rows.append({"seed": seed, "model": name, "feedback": feedback, **empty, "verdict": "refused: " + metrics["refused"][name]})
            continue
        m = models[name]
        rows.append(
            {
                "seed": seed,
                "model": name,
                "feedback": feedback,
                "test_accuracy": m["test"]["accuracy"],
                "shortcut_test_accuracy": m["shortcut_test"]["accuracy"],
                "test_ap": m["test"]["activation_precision"],
                "child_cp": m["shortcut_test"].get("child_cp"),
                "child_cp_occlusion": lookup(m["shortcut_test"], "by_explainer.occlusion.child_cp"),
                "deletion_gradcam": lookup(m["shortcut_test"], "by_explainer.gradcam.deletion"),
                "deletion_occlusion": lookup(m["shortcut_test"], "by_explainer.occlusion.deletion"),
                "recovered": None if feedback == "none" else recovered(m["shortcut_test"]["accuracy"], base, oracle),
                "verdict": metrics.get("verdicts", {}).get(name, {}).get("label"),
            }
        )
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per model: the median, minimum and maximum over seeds of every figure (``None`` values left out)."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        entry = {"model": name, "feedback": mine[0]["feedback"], "seeds": len(mine)}
        for key in FIGURES:
            values = [r[key] for r in mine if r[key] is not None]
            entry[key] = (statistics.median(values), min(values), max(values)) if values else None
        verdicts = [r["verdict"] for r in mine if r.get("verdict")]
        entry["verdicts"] = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
        out.append(entry)
    return out


def study_markdown(rows: list[dict]) -> str:
    """study.md: one line per model with the median and the [min, max] of each figure, over the seeds in ``rows``."""
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    head = "| model | feedback | " + " | ".join(FIGURES) + " | verdicts |"
    lines = [
        f"Medians over seeds {' '.join(map(str, seeds))}, with [min, max]. recovered = share of the oracle's "
        "shortcut-test accuracy that a method wins back over the unrefined model; child_cp = Confounder Precision "
        "of GradCAM on shortcut-test children called Viral Pneumonia (all of them); child_cp_occlusion = the same for "
        "occlusion maps, and deletion_* = the drop of the predicted class's probability when each map's top 5% is "
        "hidden, both on a fixed sample of up to 64 shortcut-test images.",
        "",
        head,
        "|---|---|" + "---|" * (len(FIGURES) + 1),
    ]
    for s in summarise(rows):
        cells = ["" if s[k] is None else f"{s[k][0]:.3f} [{s[k][1]:.3f}, {s[k][2]:.3f}]" for k in FIGURES]
        verdicts = ", ".join(f"{v} {n}" for v, n in s["verdicts"].items())
        lines.append(f"| {s['model']} | {s['feedback']} | " + " | ".join(cells) + f" | {verdicts} |")
    return "\n".join(lines) + "\n"


def study_png(rows: list[dict]) -> bytes:
    """One dot per seed and model for shortcut-test accuracy, test AP and child CP."""
    import matplotlib.pyplot as plt

    from exbl_core.figures import figure_png

    models = list(dict.fromkeys(r["model"] for r in rows))
    panels = (
        ("shortcut_test_accuracy", "shortcut-test accuracy"),
        ("test_ap", "test AP (lungs)"),
        ("child_cp", "child CP, GradCAM (shoulders)"),
        ("child_cp_occlusion", "child CP, occlusion (shoulders)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.45 * len(models) + 1.6), sharey=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for y, name in enumerate(models):
            values = [r[key] for r in rows if r["model"] == name and r[key] is not None]
            ax.scatter(values, [y] * len(values), s=28, alpha=0.75, color="tab:red" if name == "unrefined" else "tab:blue")
            if values:
                ax.plot([statistics.median(values)] * 2, [y - 0.3, y + 0.3], color="black", lw=1.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-0.02, 1.02)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(models)), models)
    axes[0].invert_yaxis()
    fig.suptitle("One dot per seed; the bar is the median", fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def write_study_json(out: Path, methods: list[str], rows: list[dict], settings: dict | None = None) -> None:
    """study.json: the settings (which a resume must match), the seeds finished so far and their rows."""
    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    doc = {"format": STUDY_FORMAT, "seeds": seeds, "methods": methods, "rows": rows}
    files.write_json(out / STUDY_JSON, doc if settings is None else {**doc, "settings": settings})


def write_study(out: Path, methods: list[str], rows: list[dict], settings: dict | None = None) -> None:
    """study.json, study.md and study.png, each written atomically; ``seeds`` lists the seeds finished so far."""
    write_study_json(out, methods, rows, settings)
    files.atomic_write_text(out / STUDY_MD, study_markdown(rows))
    files.atomic_write_bytes(out / STUDY_PNG, study_png(rows))


def run_study(
    out: str | Path,
    seeds: list[int],
    methods: list[str],
    preset: config.Preset,
    device: torch.device,
    progress: Progress = lambda _msg: None,
    on_seed: Callable[[int], None] = lambda _seed: None,
    preset_name: str = "demo",
    pick_from: str = "gradcam",
) -> list[dict]:
    """Run (or resume) the study and write its files after every seed; returns study.json's rows.

    study.json records the settings before the first seed starts, so that even a study
    interrupted in its first seed refuses a resume with other settings (``check_resume``).
    """
    out = Path(out)
    settings = study_settings(preset_name, preset, methods, pick_from)
    check_request(out, seeds, methods)
    check_resume(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / STUDY_JSON).is_file() or "settings" not in files.read_json(out / STUDY_JSON):
        write_study_json(out, methods, [], settings)
    rows: list[dict] = []
    for seed in seeds:
        metrics = seed_run(out, seed, methods, preset, device, progress, pick_from)
        rows += study_rows(seed, metrics, methods)
        write_study(out, methods, rows, settings)
        on_seed(seed)
    return rows
