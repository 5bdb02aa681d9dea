"""Compare: the verdict on the shortcut test, Table 1 with deltas, Figure 3 before and after, and downloads."""

from __future__ import annotations

import streamlit as st
import torch

from exbl_core import pipeline, runs
from exbl_core.data import CLASSES
from exbl_core.figures import table1_csv, table1_rows
from studio import cache, live, pages, state, tasks, views

FIGURE_MAX_ROWS = 8  # more rows make a page too tall to compare, and slow to draw

pages.setup("Compare")

run = pages.trained_run()
if not run.has(runs.REFINED):
    views.empty_state("No refined model yet: start eXBL refinement on Refine.", pages.REFINE, "Refine")
    st.stop()

KINDS = ("evaluate", "refine", "demo")
busy_here = live.job_on(run) is not None
locked = live.other_job_note(run, KINDS)
metrics = state.current_metrics(run)
if metrics is None and not busy_here:
    st.info("The metrics are older than the refined model (or missing), for example after a cancelled refinement.")
    if st.button("Evaluate both models", type="primary", icon=":material/calculate:", disabled=locked) and not live.refused():
        live.start("evaluate", run, tasks.evaluate_work(run, cache.data(run), cache.device()))
if metrics is None or busy_here:
    live.job_panel(run, KINDS)
    st.stop()

st.subheader("Verdict")
views.model_summary(metrics["unrefined"], metrics["refined"])
st.caption(
    "A verdict on this one run. The numbers differ between runs and machines (thread count, GPU, nondeterministic "
    "kernels), often by more than a refinement moves them: `python -m exbl_core study --out DIR` reports medians "
    "and spreads over several seeds."
)
gaps = metrics.get("shortcut_gap", {})
if "unrefined" in gaps and "refined" in gaps:
    vp = {w: (g["vp_recall_confounded"], g["vp_recall_shortcut_test"]) for w, g in gaps.items()}
    st.caption(
        "The shortcut test split shows children in every class: a model that still uses the shortcut loses accuracy there "
        "and calls children Viral Pneumonia. AP alone can look fixed while the shortcut is still used. "
        f"Viral Pneumonia recall, confounded → shortcut test: unrefined {vp['unrefined'][0]:.2f} → {vp['unrefined'][1]:.2f}; "
        f"eXBL {vp['refined'][0]:.2f} → {vp['refined'][1]:.2f}."
    )

rows = table1_rows(metrics)
st.subheader("Table 1")
st.dataframe(
    [{"metric": r["metric"], "split": r["split"], "unrefined": r["unrefined"], "eXBL": r["exbl"], "Δ": r["delta"]} for r in rows],
    hide_index=True,
    column_config={k: st.column_config.NumberColumn(format="%.3f") for k in ("unrefined", "eXBL")}
    | {"Δ": st.column_config.NumberColumn(format="%+.3f")},
)

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
    st.image(figure, width="stretch")
else:
    st.info("Choose one or more test images above to see them before and after.")

st.subheader("Downloads")
d1, d2, d3 = st.columns(3)
if figure is not None:
    d1.download_button("Figure 3 (PNG)", figure, file_name=f"{run.name}-figure3.png", mime="image/png", icon=":material/image:")
d2.download_button("Table 1 (CSV)", table1_csv(rows), file_name=f"{run.name}-table1.csv", mime="text/csv", icon=":material/table:")
d3.download_button(
    "Refined checkpoint",
    run.file(runs.REFINED).read_bytes(),
    file_name=f"{run.name}-refined.pt",
    mime="application/octet-stream",
    icon=":material/download:",
)
