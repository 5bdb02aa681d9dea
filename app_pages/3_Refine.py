"""Refine: the chosen pair, the settings, Start and Cancel, and the live loss chart."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from exbl_core import run_data, run_models
from exbl_core.data import CLASSES
from exbl_core.figures import EXPLAINER_LABELS, model_label
from exbl_core.losses import DISTANCES, EXPLANATIONS
from exbl_core.methods import METHODS
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
st.caption("Every method starts from the unrefined model and uses this pair; the lung-mask methods use every image's mask too.")
cols = st.columns(2)
for col, side, color in zip(cols, state.SIDES, (views.GOOD_RGB, views.BAD_RGB), strict=True):
    i, shown = pair[side], state.marked_on(run, side)  # the map it was judged on
    col.image(
        views.pair_tile(images[i], cache.maps(run, "unrefined", "train", shown, [i])[0], color),
        caption=f"{side.capitalize()}: #{i} {CLASSES[int(train.labels[i])]}, "
        + views.nowrap(f"AP {scores['ap'][i]:.2f}")
        + f", marked on its {EXPLAINER_LABELS[shown]} map",
        width="stretch",
    )
st.page_link(pages.EXPLORE, label="Change the pair on Explore", icon=":material/swap_horiz:")

RUN_KINDS = ("refine", "demo")
job = live.job_on(run)
refining_here = job is not None and job.kind in RUN_KINDS
locked = live.other_job_note(run, RUN_KINDS)
saved = run_data.train_config(run, "refine")
FEEDBACK = {"two-clicks": "needs only the two clicks", "masks": "needs a lung mask for every training image"}
with st.container(border=True):
    names = list(METHODS)
    method = st.selectbox(
        "Method",
        names,
        index=names.index(saved.method),
        format_func=lambda m: f"{model_label(m)} ({FEEDBACK[METHODS[m].feedback]})",
        disabled=locked,
        key=f"method-{run.path}",
    )
    cfg = run_data.refine_settings(run, {"method": method})  # the method's own schedule shows as the default
    st.caption(f"{METHODS[method].summary[0].upper()}{METHODS[method].summary[1:]}. Source: {METHODS[method].source}.")
    shown_lambda = (cfg if saved.method == method else replace(cfg, lambda_expl=None)).weight  # the method's own unless chosen for it
    c1, c2, c3, c4 = st.columns(4)
    epochs = c1.number_input("Epochs", 1, 200, cfg.epochs, disabled=locked)
    lambda_expl = c2.number_input(
        "λ (the method's term)",
        0.0,
        100.0,
        shown_lambda,
        0.1,
        help="Weight of the method's loss term against cross-entropy (counterexamples adds no term).",
        disabled=locked or METHODS[method].term_name is None,
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
        chosen = {
            "epochs": int(epochs),
            "lambda_expl": float(lambda_expl),
            "lr": float(lr),
            "patience": int(patience),
            "margin": float(margin),
            "distance": distance,
            "explanation": kind,
        }
        # Only what the user changed: an untouched field keeps following the method's schedule.
        shown = {**cfg.to_dict(), "lambda_expl": shown_lambda}
        overrides = {"method": method} | {k: v for k, v in chosen.items() if v != shown[k]}
        work = tasks.refine_work(
            run, cache.data(run), cache.device(), pair["good"], pair["bad"], overrides, state.pair_explainer(run), state.pair_rule(run)
        )
        live.start("refine", run, work)


def pair_words(good: int, bad: int) -> str:
    return f"good #{good}, bad #{bad}"


# Curves and results belong to the pair they came from: only the running job's, or the chosen
# method's model when its checkpoint says it came from the pair shown above. A model refined
# before checkpoints recorded their pair is taken to be from pair.json, saved at each Start.
has_model = run.has(run_models.model_file(method))
model_pair = cache.refined_pair(run, method) if has_model else None
saved = state.saved_pair(run)
came_from = state.pair_key(model_pair)[:2] if model_pair is not None else saved[:2] if saved is not None else None
same_pair = came_from == (pair["good"], pair["bad"])
from_words = state.pair_words(model_pair) if model_pair is not None else pair_words(*came_from) if came_from else ""


def live_caption(job: Job) -> str:
    live_pair = next(((e["good"], e["bad"]) for e in reversed(job.events) if e.get("step") == "pair"), None)
    return f"Live: the running {live.JOB_NAMES[job.kind]}, with the pair {pair_words(*live_pair) if live_pair else 'being saved'}."


if not refining_here:  # a running job's panel says itself which pair it refines with (live_caption)
    if same_pair and has_model:
        st.caption(f"The last refinement of this run, with this pair ({from_words}), made the {model_label(method)} model below.")
    elif came_from is not None and has_model:
        st.info(
            f"No refinement with this pair yet. The run's {model_label(method)} model came from {from_words}; "
            "Start refines the unrefined model again with this pair and replaces that model."
        )
    else:
        st.caption("No refinement yet: press Start. The live losses appear here.")
live.job_panel(run, RUN_KINDS, phase="refine", after="curves" if same_pair else "nothing", describe=live_caption)
if same_pair and has_model and not refining_here:
    metrics = state.current_metrics(run)
    if metrics is not None and method in metrics["models"]:
        models = metrics["models"]
        st.subheader("Result")
        views.model_summary(models["unrefined"], models[method], models.get("oracle"), name=model_label(method))
        views.rule_caption(models.get("oracle"))
        st.page_link(pages.COMPARE, label="Next: compare before and after", icon=":material/arrow_forward:")
    else:
        st.page_link(pages.COMPARE, label="Next: evaluate and compare on Compare", icon=":material/arrow_forward:")
