"""Home: what eXBL is, where the current run stands, and the one-click demo."""

from __future__ import annotations

import time

import streamlit as st

from exbl_core import pipeline, runs
from studio import cache, live, pages, state, tasks, views

pages.setup("eXBL Studio")
st.markdown(
    "A chest X-ray classifier can score well for the wrong reason: here the synthetic data set ties Viral Pneumonia "
    "to children, and the model learns to look at the shoulders' growth plates instead of the lungs. "
    "**eXBL** (explanation-based bias learning) fixes this from just **one good and one bad GradCAM explanation**: "
    "it refines the model so that every explanation moves towards the good one and away from the bad one. "
    "Afterwards, a *shortcut test*, where children appear in every class, shows whether the shortcut was really unlearned."
)

STEPS = (
    ("Data and unrefined model", runs.UNREFINED, pages.DATA),
    ("One good and one bad explanation", runs.EXEMPLARS, pages.EXPLORE),
    ("eXBL refinement", runs.REFINED, pages.REFINE),
    ("Before and after", runs.METRICS, pages.COMPARE),
)

st.subheader("Current run")
run = state.current_run()
if run is None:
    views.empty_state(
        "No run yet: run the demo below, or choose the data and train a model on Data and model.", pages.DATA, "Data and model"
    )
else:
    cache.prefetch(run)
    st.markdown(f"**{run.name}** in `{run.path.parent}`")
    for label, name, page in STEPS:
        done = run.has(name)
        st.page_link(
            page,
            label=f"{label}: {'done' if done else 'not yet'}",
            icon=":material/check_circle:" if done else ":material/radio_button_unchecked:",
        )

st.subheader("Run the whole demo")
quick = st.toggle("Quick version (tiny data, about a minute)", value=False)
preset = pipeline.QUICK if quick else pipeline.DEMO
st.caption(
    "Generates synthetic chest X-ray phantoms, trains the unrefined model, picks the pair automatically by AP, refines "
    f"with eXBL and evaluates: {preset.train.epochs} + {preset.refine.epochs} epochs on "
    f"{4 * preset.data.n_train} training images at {preset.data.size}×{preset.data.size}. You can switch pages while it runs."
)
if st.button("Run the demo", type="primary", icon=":material/play_arrow:") and not live.busy():
    with st.spinner("Creating the run…"):
        run = pipeline.new_run(cache.runs_dir() / f"demo-{time.strftime('%Y%m%d-%H%M%S')}", preset.data, preset.train, preset.refine)
    state.select_run(run)
    live.start("demo", run, tasks.demo_work(run, cache.device()))
if run is not None:
    live.job_panel(run, ("demo",))
