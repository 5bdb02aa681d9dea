"""Home: what eXBL is, where the current run stands, its result, and the one-click demo."""

from __future__ import annotations

import time

import streamlit as st

from exbl_core import config, run_data, run_models, runs
from exbl_core.figures import model_label
from studio import cache, example, live, pages, progress, state, tasks, views

pages.setup("eXBL Studio")
st.markdown(
    "A chest X-ray classifier can score well for the wrong reason: here the synthetic data set ties Viral Pneumonia "
    "to children, and the model learns to decide from the shoulders' growth plates instead of the lungs "
    "(its GradCAM does not always show it). "
    "**eXBL** (explanation-based learning) tries to unlearn this from just **one good and one bad GradCAM explanation**: "
    "it refines the model so that every explanation moves towards the good one and away from the bad one. Other "
    "methods use the same two clicks, or a lung mask for every image. "
    "A *shortcut test*, where children appear in every class, then shows whether the shortcut was really unlearned."
)

FIRST_CLICK = (  # per first step not yet done: the one sentence that says what to click first
    "**Click first:** *Run the demo* below, which does every step for you while this page shows the time left.",
    "**Click first:** *Explore*, to see where the model looks and mark one good and one bad explanation.",
    "**Click first:** *Refine*, and press Start: it refines the model from your pair.",
    "**Click first:** *Compare*, to see the results before and after.",
    "**Click first:** *Compare*, to see before and after; then try another pair or method on *Explore* and *Refine*.",
)
STEP_PAGES = (pages.DATA, pages.EXPLORE, pages.REFINE, pages.COMPARE)
STEP_ICONS = {"done": ":material/check_circle:", "running": ":material/pending:", "not yet": ":material/radio_button_unchecked:"}
ALL_JOBS = tuple(live.JOB_PAGES)


def steps(run: runs.Run) -> None:
    """The workflow's four steps and their true state: a step a job is rewriting is running, not done."""

    @st.fragment(run_every=live.POLL_SECONDS if live.job_on(run) else None)
    def draw() -> None:
        job = live.job_on(run)
        has = steps_done(run)
        for label, page, status in zip(
            progress.STEPS, STEP_PAGES, progress.step_states(has, job and progress.current_step(job.events)), strict=True
        ):
            st.page_link(page, label=f"{label}: {status}", icon=STEP_ICONS[status])

    draw()


def steps_done(run: runs.Run) -> list[bool]:
    """Whether each workflow step (``progress.STEPS``) has its result in the run: model, pair, refinement, evaluation."""
    return [run.has(runs.UNREFINED), run.has(runs.PAIR), bool(run_models.refined(run)), state.current_metrics(run) is not None]


def first_click(run: runs.Run | None) -> str:
    """The one sentence on what to click first: the first step of the workflow not done yet."""
    if run is None:  # the example's offer is shown above this sentence
        return "**Click first:** *Open the shipped example* above, to see a trained model's explanations at once."
    if live.job_on(run):
        return "**While the job runs:** its progress and time left are below; *Explore* works meanwhile."
    has = steps_done(run)
    return FIRST_CLICK[has.index(False) if False in has else len(has)]


def result(run: runs.Run) -> None:
    """The headline: the computed verdict and the numbers behind it, and the way to Compare."""
    metrics = state.current_metrics(run)
    if metrics is None or live.job_on(run):
        return
    st.subheader("Result")
    models = metrics["models"]
    for name in run_models.refined(run):
        views.model_summary(models["unrefined"], models[name], models.get("oracle"), name=model_label(name))
    views.rule_caption(models.get("oracle"))
    st.page_link(pages.COMPARE, label="See before and after, Table 1 and the downloads on Compare", icon=":material/arrow_forward:")


st.subheader("Current run")
run = state.current_run() or example.offer()
example.notes()
st.markdown(first_click(run))
if run is None:
    views.empty_state(
        "No run yet: run the demo below, or choose the data and train a model on Data and model.", pages.DATA, "Data and model"
    )
else:
    cache.prefetch(run)
    st.markdown(f"**{run.name}** in `{run.path.parent}`")
    steps(run)
    live.job_panel(run, ALL_JOBS, after="outcome")
    result(run)

st.subheader("Run the whole demo")
busy = live.other_job_note(run, ALL_JOBS)
quick = st.toggle("Quick version (tiny data, about a minute)", value=False, disabled=busy)
preset = config.preset(quick=quick)
shipped = not quick and st.toggle(
    "Start from the shipped model (off: train it from scratch, minutes)",
    value=True,
    disabled=busy,
    help="The shipped example in assets/ holds this demo's trained unrefined model and oracle; refinement starts from them.",
)
epochs = [] if shipped else [preset.train.epochs]
epochs += [config.scheduled(preset.refine, {"method": m}).epochs for m in preset.methods]
st.caption(
    "Generates synthetic chest X-ray phantoms, "
    + ("starts from the shipped unrefined model and oracle, " if shipped else "trains the unrefined model, ")
    + "picks the pair automatically by AP, refines "
    f"with {' and '.join(model_label(m) for m in preset.methods)} and evaluates: "
    f"{' + '.join(map(str, epochs))} epochs on "
    f"{4 * preset.data.n_train} training images at {preset.data.size}×{preset.data.size}. "
    "While it runs, this page shows the time left, and you can switch pages."
)
locked_help = "One job runs at a time: this comes back when the running job has finished, or when you cancel it." if busy else None
if st.button("Run the demo", type="primary", icon=":material/play_arrow:", disabled=busy, help=locked_help) and not live.refused():
    with st.spinner("Creating the run…"):
        run = run_data.new_run(cache.runs_dir() / f"demo-{time.strftime('%Y%m%d-%H%M%S')}", preset.data, preset.train, preset.refine)
    state.select_run(run)
    live.start("demo", run, tasks.demo_work(run, cache.device(), preset.methods, shipped and example.for_demo()))
