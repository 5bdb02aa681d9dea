"""Compare: every refined model side by side: verdicts on the shortcut test, Table 1, Figure 3 and downloads."""

from __future__ import annotations

import streamlit as st
import torch

from exbl_core import pipeline, runs, study
from exbl_core.data import CLASSES
from exbl_core.figures import PAPER_NOTE, model_label, table1_columns
from studio import cache, live, pages, state, tasks, views

FIGURE_MAX_ROWS = 8  # more rows make a page too tall to compare, and slow to draw

pages.setup("Compare")

run = pages.trained_run()
if not run.refined():
    views.empty_state("No refined model yet: start a refinement on Refine.", pages.REFINE, "Refine")
    st.stop()

KINDS = ("evaluate", "refine", "demo", "oracle")
busy_here = live.job_on(run) is not None
locked = live.other_job_note(run, KINDS)
metrics = state.current_metrics(run)
if metrics is None and not busy_here:
    st.info("The metrics are older than a model of this run (or missing), for example after a cancelled refinement.")
    if st.button("Evaluate every model", type="primary", icon=":material/calculate:", disabled=locked) and not live.refused():
        live.start("evaluate", run, tasks.evaluate_work(run, cache.data(run), cache.device()))
if metrics is None or busy_here:
    live.job_panel(run, KINDS)
    st.stop()

models = metrics["models"]
refined = [m for m in run.refined() if m in models]
oracle = models.get("oracle")
if (sentence := state.disagreement(run, metrics)) is not None:
    st.info(sentence)
st.subheader("Verdicts")
for name in refined:
    with st.container(border=True):
        views.model_summary(models["unrefined"], models[name], oracle, name=model_label(name))
if oracle is None and pipeline.can_train_oracle(run):
    st.info(
        "These verdicts compare the shortcut gap only. The full verdict measures how much of an oracle's shortcut-test "
        "accuracy a refinement wins back; the oracle is the same model trained on phantoms whose child anatomy does not "
        "follow the class. Training it takes about as long as the unrefined model."
    )
    if st.button("Train the oracle", icon=":material/model_training:", disabled=locked) and not live.refused():
        live.start("oracle", run, tasks.oracle_work(run, cache.data(run), cache.device()))
st.caption(
    "A verdict on this one run. The numbers differ between runs and machines (thread count, GPU, nondeterministic "
    "kernels), often by more than a refinement moves them: `python -m exbl_core study --out DIR` reports medians "
    "and spreads over several seeds."
)
gaps = metrics.get("shortcut_gap", {})
if gaps:
    recalls = "; ".join(
        f"{model_label(m)} {g['vp_recall_confounded']:.2f} → {g['vp_recall_shortcut_test']:.2f}" for m, g in gaps.items() if m in models
    )
    st.caption(
        "The shortcut test split shows children in every class: a model that still uses the shortcut loses accuracy there "
        "and calls children Viral Pneumonia. AP alone can look fixed while the shortcut is still used. "
        f"Viral Pneumonia recall, confounded → shortcut test: {recalls}."
    )

rows = pipeline.table1(run, metrics)
st.subheader("Table 1")
columns = table1_columns(rows)
table = []
for r in rows:
    line = {"metric": r["metric"], "split": r["split"]}
    for m in columns:
        line[model_label(m)] = r["values"].get(m)
        if m not in ("unrefined", "oracle") and r["values"].get(m) is not None:
            line[f"Δ {model_label(m)}"] = r["values"][m] - r["values"]["unrefined"]
    if "paper" in r:
        line["paper: unrefined"], line["paper: eXBL"] = r["paper"]
    table.append(line)
number = st.column_config.NumberColumn(format="%.3f")
st.dataframe(
    table,
    hide_index=True,
    column_config={
        k: st.column_config.NumberColumn(format="%+.3f") if k.startswith("Δ") else number for k in table[0] if k not in ("metric", "split")
    }
    if table
    else None,
    height="content",  # every row: with the explainer rows Table 1 is longer than the default ten, and no row may hide
)
if rows and "paper" in rows[0]:
    st.caption(PAPER_NOTE)
if note := pipeline.table1_note(run):
    st.caption(note)

st.subheader("Before and after (the paper's Figure 3)")
test = cache.split(run, "test")
default_rows = pipeline.default_figure_rows(test, torch.from_numpy(cache.scores(run, "unrefined", "test")["ap"]))
chosen = st.multiselect(
    f"Test images (up to {FIGURE_MAX_ROWS})",
    list(range(len(test))),
    default=default_rows,
    format_func=lambda i: f"#{i} {CLASSES[int(test.labels[i])]}",
    help="Preselected: " + pipeline.FIGURE_ROWS_RULE + ". Viral Pneumonia is the class the shortcut hides behind.",
    max_selections=FIGURE_MAX_ROWS,
    select_all=False,
    key=f"figure-rows-{run.path}",
    persist_state="session",
)
figure = None
if chosen:
    figure = cache.figure3_png(run, chosen, pipeline.FIGURE_ROWS_RULE if chosen == default_rows else "Test images chosen on Compare")
    if (problem := cache.explainer_problem(run, "occlusion")) is None:
        st.caption(
            "Each model has two columns: GradCAM, the paper's map, and occlusion, where hiding a patch lowers the model's "
            "confidence, which shows what the model uses. GradCAM at this layer can hide a shortcut that occlusion shows."
        )
    else:
        st.caption(f"GradCAM only: {problem}.")
    st.image(figure, width="stretch")
else:
    st.info("Choose one or more test images above to see them before and after.")

study_dir = study.find_study(run.path)
if study_dir is not None:
    st.subheader("How reliable is one run? The study")
    st.caption(f"`{study_dir}`: every method on the same unrefined models over several seeds; one dot per seed.")
    if (study_dir / study.STUDY_PNG).is_file():
        st.image(str(study_dir / study.STUDY_PNG), width="stretch")
    st.markdown((study_dir / study.STUDY_MD).read_text(encoding="utf-8"))

st.subheader("Downloads")
columns = st.columns(2 + len(refined))
if figure is not None:
    columns[0].download_button("Figure 3 (PNG)", figure, file_name=f"{run.name}-figure3.png", mime="image/png", icon=":material/image:")
columns[1].download_button(
    "Table 1 (CSV)", pipeline.table1_csv_text(run, rows), file_name=f"{run.name}-table1.csv", mime="text/csv", icon=":material/table:"
)
for col, name in zip(columns[2:], refined, strict=True):
    col.download_button(
        f"{model_label(name)} checkpoint",
        run.file(runs.refined_file(name)).read_bytes(),
        file_name=f"{run.name}-{runs.refined_file(name)}",
        mime="application/octet-stream",
        icon=":material/download:",
    )
