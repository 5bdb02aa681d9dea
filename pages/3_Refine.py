"""Refine: the chosen pair, the settings, Start and Cancel, and the live loss chart."""

from __future__ import annotations

import streamlit as st

from exbl_core import pipeline, runs
from exbl_core.data import CLASSES
from exbl_core.losses import DISTANCES, EXPLANATIONS
from studio import cache, live, pages, state, tasks, views

pages.setup("Refine")

run = pages.trained_run()
pair = state.pair(run)
if pair["good"] is None or pair["bad"] is None:
    views.empty_state("No pair yet: mark one good and one bad explanation on Explore.", pages.EXPLORE, "Explore")
    st.stop()

train = cache.split(run, "train")
scores = cache.scores(run, "unrefined", "train")
images = train.float_images()[:, 0].numpy()
st.caption("eXBL pulls every explanation towards the good one and away from the bad one, while keeping the classification loss.")
cols = st.columns(2)
for col, role, color in zip(cols, state.ROLES, (views.GOOD_RGB, views.BAD_RGB), strict=True):
    i = pair[role]
    col.image(
        views.pair_tile(images[i], scores["cams"][i], color),
        caption=f"{role.capitalize()}: #{i} {CLASSES[int(train.labels[i])]}, AP {scores['ap'][i]:.2f}",
        width="stretch",
    )
st.page_link(pages.EXPLORE, label="Change the pair on Explore", icon=":material/swap_horiz:")

refining_here = live.job_on(run) is not None
live.note_other_job(run, ("refine", "demo"))
cfg = pipeline.train_config(run, "refine")
with st.container(border=True):
    c1, c2, c3, c4 = st.columns(4)
    epochs = c1.number_input("Epochs", 1, 200, cfg.epochs)
    lambda_expl = c2.number_input("λ explanation", 0.0, 100.0, cfg.lambda_expl, 0.1, help="Weight of the eXBL loss against cross-entropy.")
    lr = c3.number_input("Learning rate", 1e-6, 1e-1, cfg.lr, format="%.0e", step=1e-5)
    patience = c4.number_input("Early-stopping patience (epochs)", 1, 50, cfg.patience)
    with st.expander("Advanced"):
        a1, a2, a3 = st.columns(3)
        margin = a1.number_input("Triplet margin", 0.0, 100.0, cfg.margin, 0.1)
        distance = a2.selectbox(
            "Distance",
            DISTANCES,
            index=DISTANCES.index(cfg.distance),
            help="euclidean is the paper's; normalized scales each explanation to unit length first, which keeps more triplets active.",
        )
        kind = a3.selectbox(
            "Explanation E",
            EXPLANATIONS,
            index=EXPLANATIONS.index(cfg.explanation),
            format_func={"gray_cam": "image × GradCAM (paper)", "cam": "GradCAM alone"}.get,
            help="gray_cam is the paper's E = image × GradCAM. cam uses GradCAM alone: the paper's E weights attention on bright "
            "bone most and on the dark lungs least.",
        )
    if not refining_here and st.button("Start refinement", type="primary", icon=":material/play_arrow:") and not live.busy():
        overrides = {
            "epochs": int(epochs),
            "lambda_expl": float(lambda_expl),
            "lr": float(lr),
            "patience": int(patience),
            "margin": float(margin),
            "distance": distance,
            "explanation": kind,
        }
        live.start("refine", run, tasks.refine_work(run, cache.data(run), cache.device(), pair["good"], pair["bad"], overrides))

live.job_panel(run, ("refine", "demo"), phase="refine")
if run.has(runs.REFINED) and not refining_here:
    st.page_link(pages.COMPARE, label="Next: compare before and after", icon=":material/arrow_forward:")
