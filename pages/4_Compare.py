"""Compare: Figure 3 before and after, Table 1 with deltas, the shortcut test, and downloads."""

from __future__ import annotations

import streamlit as st
import torch

from exbl_core import pipeline, runs
from exbl_core.data import CLASSES
from exbl_core.figures import PAPER_NOTE
from studio import cache, live, pages, tasks, views

pages.setup("Compare")

run = pages.trained_run()
if not run.has(runs.REFINED):
    views.empty_state("No refined model yet: start eXBL refinement on Refine.", pages.REFINE, "Refine")
    st.stop()

busy_here = live.job_on(run) is not None
stale = not run.has(runs.METRICS) or run.file(runs.METRICS).stat().st_mtime < run.file(runs.REFINED).stat().st_mtime
if stale and not busy_here:
    st.info("The metrics are older than the refined model (or missing), for example after a cancelled refinement.")
    if st.button("Evaluate both models", type="primary", icon=":material/calculate:") and not live.busy():
        live.start("evaluate", run, tasks.evaluate_work(run, cache.data(run), cache.device()))
if stale or busy_here:
    live.job_panel(run, ("evaluate", "refine", "demo"))
    st.stop()
metrics = runs.read_json(run.file(runs.METRICS))
rows = pipeline.table1(run, metrics)
PAPER = {"paper_unrefined": "paper: unrefined", "paper_exbl": "paper: eXBL"}
st.subheader("Table 1")
st.dataframe(
    [
        {"metric": r["metric"], "split": r["split"], "unrefined": r["unrefined"], "eXBL": r["exbl"], "Δ": r["delta"]}
        | {label: r[key] for key, label in PAPER.items() if key in r}
        for r in rows
    ],
    hide_index=True,
    column_config={k: st.column_config.NumberColumn(format="%.3f") for k in ("unrefined", "eXBL")}
    | {"Δ": st.column_config.NumberColumn(format="%+.3f")}
    | {label: st.column_config.NumberColumn(format="%.2f") for label in PAPER.values()},
)
if rows and "paper_unrefined" in rows[0]:
    st.caption(PAPER_NOTE)
if note := pipeline.table1_note(run):
    st.caption(note)

gaps = metrics.get("shortcut_gap", {})
if "unrefined" in gaps and "refined" in gaps:
    st.subheader("Shortcut test")
    st.caption(
        "The shortcut test split shows children in every class. A model that still uses the shortcut loses accuracy there "
        "and calls children Viral Pneumonia. AP alone can look fixed while the shortcut is still used: read both."
    )
    cards = (("Accuracy, confounded test", "test"), ("Accuracy, shortcut test", "shortcut_test"), ("Shortcut gap", None))
    for col, (title, key) in zip(st.columns(3), cards, strict=True):
        before = metrics["unrefined"][key]["accuracy"] if key else gaps["unrefined"]["accuracy_gap"]
        after = metrics["refined"][key]["accuracy"] if key else gaps["refined"]["accuracy_gap"]
        col.metric(
            title, f"{after:.3f}", f"{after - before:+.3f} vs {before:.3f} unrefined", delta_color="inverse" if key is None else "normal"
        )
    vp = {w: (g["vp_recall_confounded"], g["vp_recall_shortcut_test"]) for w, g in gaps.items()}
    st.caption(
        f"Viral Pneumonia recall, confounded → shortcut test: unrefined {vp['unrefined'][0]:.2f} → {vp['unrefined'][1]:.2f}; "
        f"eXBL {vp['refined'][0]:.2f} → {vp['refined'][1]:.2f}."
    )

st.subheader("Before and after (the paper's Figure 3)")
st.caption(f"Preselected: {pipeline.FIGURE_ROWS_RULE}. Add or remove any test image.")
test = cache.split(run, "test")
options = list(range(len(test)))
chosen = st.multiselect(
    "Test images",
    options,
    default=pipeline.default_figure_rows(test, torch.from_numpy(cache.scores(run, "unrefined", "test")["ap"])),
    format_func=lambda i: f"#{i} {CLASSES[int(test.labels[i])]}",
    help="Viral Pneumonia is the class the shortcut hides behind.",
)
figure = None
if chosen:
    figure = cache.figure3_png(run, chosen)
    st.image(figure, width="stretch")
else:
    st.info("Choose one or more test images above to see them before and after.")

st.subheader("Downloads")
d1, d2, d3 = st.columns(3)
if figure is not None:
    d1.download_button("Figure 3 (PNG)", figure, file_name=f"{run.name}-figure3.png", mime="image/png", icon=":material/image:")
d2.download_button(
    "Table 1 (CSV)", pipeline.table1_csv_text(run, rows), file_name=f"{run.name}-table1.csv", mime="text/csv", icon=":material/table:"
)
d3.download_button(
    "Refined checkpoint",
    run.file(runs.REFINED).read_bytes(),
    file_name=f"{run.name}-refined.pt",
    mime="application/octet-stream",
    icon=":material/download:",
)
