"""Compare: every refined model side by side: verdicts on the shortcut test, Table 1, Figure 3 and downloads."""

from __future__ import annotations

import time

import streamlit as st
import torch

from exbl_core import results, run_data, run_models, runs, study
from exbl_core.data import CLASSES
from exbl_core.figures import PAPER_NOTE, model_label, table1_columns
from studio import cache, live, pages, state, tasks, views

pages.setup("Compare")

run = pages.trained_run()
KINDS = ("evaluate", "refine", "demo", "oracle")
busy_here = live.job_on(run) is not None
if not run_models.refined(run) and not busy_here:
    views.empty_state("No refined model yet: start a refinement on Refine.", pages.REFINE, "Refine")
    st.stop()

locked = live.other_job_note(run, KINDS)
metrics = state.current_metrics(run)
if busy_here:  # the job's progress on top; the last finished results stay below it, marked as such
    live.job_panel(run, KINDS)
    if metrics is None:
        st.info("No finished results of this run to show meanwhile: they appear here when the job has finished.")
        st.stop()
    finished = time.strftime("%d %b %H:%M", time.localtime(run.file(runs.METRICS).stat().st_mtime))
    st.info(f"Meanwhile, the last finished results (evaluated {finished}). They are replaced when the running job has finished.")
elif metrics is None:
    st.info("The metrics are older than a model of this run (or missing), for example after a cancelled refinement.")
    if st.button("Evaluate every model", type="primary", icon=":material/calculate:", disabled=locked) and not live.refused():
        live.start("evaluate", run, tasks.evaluate_work(run, cache.data(run), cache.device()))
    live.job_panel(run, KINDS)
    st.stop()
else:
    live.job_panel(run, KINDS, after="outcome")  # how the last job ended, such as what a cancel kept

models = metrics["models"]
refined = [m for m in run_models.refined(run) if m in models]
oracle = models.get("oracle")
if (sentence := state.disagreement(run, metrics)) is not None:
    st.info(sentence)
st.subheader("Verdicts")
pairs = {name: cache.refined_pair(run, name) for name in refined}
if len({state.pair_key(p) for p in pairs.values()}) > 1:
    st.warning(
        "These models came from different pairs, so their verdicts differ by the pair as well as by the method: "
        + "; ".join(f"{model_label(m)} from {state.pair_words(p)}" for m, p in pairs.items())
        + ". Refine them again from one pair to compare the methods alone."
    )
for name in refined:
    with st.container(border=True):
        views.model_summary(models["unrefined"], models[name], oracle, name=model_label(name))
        st.caption(f"Refined from the pair {state.pair_words(pairs[name])}.")
views.rule_caption(oracle)
if oracle is None and run_data.can_train_oracle(run):
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

rows = results.table1(run, metrics)
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
if note := results.table1_note(run):
    st.caption(note)

st.subheader("Before and after (the paper's Figure 3)")
FIGURE_SPLITS = {"test": "Test images", "shortcut_test": "Shortcut test images"}
figure_split = st.radio(
    "Images from",
    [s for s in FIGURE_SPLITS if s in run_data.split_names(run)],
    format_func=lambda s: FIGURE_SPLITS[s] + (" (a test set with children in every class)" if s == "shortcut_test" else ""),
    horizontal=True,
    key=f"figure-split-{run.path}",
    persist_state="session",
    help="On the shortcut test a model that still uses the shortcut calls children Viral Pneumonia: there it shows.",
)
images, source = cache.split(run, figure_split), FIGURE_SPLITS[figure_split]
default_rows = results.default_figure_rows(images, torch.from_numpy(cache.scores(run, "unrefined", figure_split)["ap"]))
default_rule = results.FIGURE_ROWS_RULE.replace("test images", source.lower())
kept = state.figure_rows(run, figure_split)
picker_key = f"figure-rows-{figure_split}-{run.path}"
chosen = st.multiselect(
    f"{source} (up to {state.FIGURE_MAX_ROWS}; Explore adds them too)",
    list(range(len(images))),
    default=default_rows if kept is None else kept,
    format_func=lambda i: f"#{i} {CLASSES[int(images.labels[i])]}" + (" · child" if images.child is not None and images.child[i] else ""),
    help=f"Preselected: {default_rule}. Viral Pneumonia is the class the shortcut hides behind.",
    max_selections=state.FIGURE_MAX_ROWS,
    select_all=False,
    key=picker_key,
    on_change=lambda: state.set_figure_rows(run, figure_split, st.session_state[picker_key]),
)
figure = None
if chosen:
    figure = cache.figure3_png(run, chosen, default_rule if chosen == default_rows else f"{source} chosen in the app", figure_split)
    if (problem := cache.explainer_problem(run, "occlusion")) is None:
        st.caption(
            "Each model has two columns: GradCAM, the paper's map, and occlusion, where hiding a patch lowers the model's "
            "confidence, which shows what the model uses. GradCAM at this layer can hide a shortcut that occlusion shows."
        )
    else:
        st.caption(f"GradCAM only: {problem}.")
    st.image(figure, width="stretch")
else:
    st.info("Choose one or more images above to see them before and after.")

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
    "Table 1 (CSV)", results.table1_csv_text(run, rows), file_name=f"{run.name}-table1.csv", mime="text/csv", icon=":material/table:"
)
for col, name in zip(columns[2:], refined, strict=True):
    col.download_button(
        f"{model_label(name)} checkpoint",
        run.file(runs.refined_file(name)).read_bytes(),
        file_name=f"{run.name}-{runs.refined_file(name)}",
        mime="application/octet-stream",
        icon=":material/download:",
    )
