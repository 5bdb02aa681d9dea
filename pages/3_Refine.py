"""Refine: the chosen pair, the settings, Start and Cancel, and the live loss chart."""

from __future__ import annotations

import time

import streamlit as st

from exbl_core import pipeline, runs
from exbl_core.data import CLASSES
from exbl_core.losses import DISTANCES, EXPLANATIONS
from studio import cache, live, pages, state, tasks, views
from studio.jobs import Job

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
        caption=f"{role.capitalize()}: #{i} {CLASSES[int(train.labels[i])]}, " + views.nowrap(f"AP {scores['ap'][i]:.2f}"),
        width="stretch",
    )
st.page_link(pages.EXPLORE, label="Change the pair on Explore", icon=":material/swap_horiz:")

RUN_KINDS = ("refine", "demo")
job = live.job_on(run)
refining_here = job is not None and job.kind in RUN_KINDS
locked = live.other_job_note(run, RUN_KINDS)
cfg = pipeline.train_config(run, "refine")
with st.container(border=True):
    c1, c2, c3, c4 = st.columns(4)
    epochs = c1.number_input("Epochs", 1, 200, cfg.epochs, disabled=locked)
    lambda_expl = c2.number_input(
        "λ explanation", 0.0, 100.0, cfg.lambda_expl, 0.1, help="Weight of the eXBL loss against cross-entropy.", disabled=locked
    )
    lr = c3.number_input("Learning rate", 1e-6, 1e-1, cfg.lr, format="%.0e", step=1e-5, disabled=locked)
    patience = c4.number_input("Early-stopping patience (epochs)", 1, 50, cfg.patience, disabled=locked)
    with st.expander("Advanced"):
        a1, a2, a3 = st.columns(3)
        margin = a1.number_input("Triplet margin", 0.0, 100.0, cfg.margin, 0.1, disabled=locked)
        distance = a2.selectbox(
            "Distance",
            DISTANCES,
            index=DISTANCES.index(cfg.distance),
            help="euclidean is the paper's; normalized scales each explanation to unit length first, which keeps more triplets active.",
            disabled=locked,
        )
        kind = a3.selectbox(
            "Explanation E",
            EXPLANATIONS,
            index=EXPLANATIONS.index(cfg.explanation),
            format_func={"gray_cam": "image × GradCAM (paper)", "cam": "GradCAM alone"}.get,
            help="gray_cam is the paper's E = image × GradCAM. cam uses GradCAM alone: the paper's E weights attention on bright "
            "bone most and on the dark lungs least.",
            disabled=locked,
        )
    if locked:
        st.caption("The settings are locked while a job runs.")
    elif st.button("Start refinement", type="primary", icon=":material/play_arrow:") and not live.refused():
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


def pair_words(good: int, bad: int) -> str:
    return f"good #{good}, bad #{bad}"


# Curves and results belong to the pair they came from: only the running job's, or the last
# refinement's when it used the pair shown above (exemplars.json is saved at each Start).
saved = state.saved_pair(run)
same_pair = saved is not None and saved[:2] == (pair["good"], pair["bad"])
started = "" if saved is None else time.strftime("%d %b %H:%M", time.localtime(saved[2]))


def live_caption(job: Job) -> str:
    live_pair = next(((e["good"], e["bad"]) for e in reversed(job.events) if e.get("step") == "pair"), None)
    return f"Live: the running {live.JOB_NAMES[job.kind]}, with the pair {pair_words(*live_pair) if live_pair else 'being saved'}."


if not refining_here:  # a running job's panel says itself which pair it refines with (live_caption)
    if same_pair and run.has(runs.REFINED):
        st.caption(f"The last refinement of this run, with this pair ({pair_words(*saved[:2])}), started {started}.")
    elif saved is not None and run.has(runs.REFINED):
        st.info(
            f"No refinement with this pair yet. The run's refined model came from {pair_words(*saved[:2])} (started {started}); "
            "Start refines the unrefined model again and replaces it."
        )
    else:
        st.caption("No refinement yet: press Start. The live losses appear here.")
live.job_panel(run, RUN_KINDS, phase="refine", after="curves" if same_pair else "nothing", describe=live_caption)
if same_pair and run.has(runs.REFINED) and not refining_here:
    metrics = state.current_metrics(run)
    if metrics is not None and "refined" in metrics:
        st.subheader("Result")
        views.model_summary(metrics["unrefined"], metrics["refined"])
        st.page_link(pages.COMPARE, label="Next: compare before and after", icon=":material/arrow_forward:")
    else:
        st.page_link(pages.COMPARE, label="Next: evaluate and compare on Compare", icon=":material/arrow_forward:")
