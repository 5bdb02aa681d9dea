"""Explore: browse images with their GradCAM or occlusion map, mark one good and one bad explanation."""

from __future__ import annotations

import math

import numpy as np
import streamlit as st
import torch

from exbl_core import explainers, faithfulness, results, run_data
from exbl_core.data import CLASSES
from exbl_core.figures import EXPLAINER_LABELS, overlay
from studio import cache, gallery, live, pages, progress, state, views

PER_PAGE = 12
COLUMNS = 3
ANY = "Any"
SPLITS = {
    "Training images (pick the pair here)": "train",
    "Test images": "test",
    "Shortcut test images (children in every class)": "shortcut_test",
}
EXPLAINER_HELP = (
    "GradCAM is the paper's explanation, computed at once for every image. Occlusion hides one patch at a time and shows "
    "where hiding it lowers the model's confidence: what the model uses. GradCAM at this layer can hide a shortcut that "
    "occlusion shows. Occlusion takes a fraction of a second per image, so it is computed for the images on the page only."
)
SUGGEST_HELP = (
    "Explains up to 12 correctly classified training images per class with occlusion (several seconds at 128 px, once per "
    "model) and suggests, within one class, the image whose map lies least on the lungs as bad and the one whose map "
    "lies most on them as good."
)
# A marked button takes its frame's colour (Streamlit's primary colour is red for both).
MARK_CSS = "".join(
    f'[class*="st-key-{side}-"] button[data-testid="stBaseButton-primary"] {{background: rgb{rgb}; border-color: rgb{rgb}; color: white}}'
    for side, rgb in (("good", views.GOOD_RGB), ("bad", views.BAD_RGB))
)

pages.setup("Explore")

run = pages.trained_run()
job = live.running_job()
if job is not None:  # every page shows a running job's phase and time left
    training_here = job.run_path == str(run.path) and job.kind in ("train", "demo") and progress.current_step(job.events) == 0
    live.other_job_note(
        run,
        (),
        "Until it ends, these explanations come from the best epoch so far, and they change as it trains."
        if training_here
        else "Explore works meanwhile: these are the unrefined model's explanations.",
    )
if (sentence := state.disagreement(run)) is not None:
    st.info(sentence)


def explainer_choice() -> str:
    """The sidebar's "Explain with", kept for the session across pages; GradCAM where the choice cannot run here."""
    name = st.sidebar.radio(
        "Explain with", explainers.NAMES, format_func=EXPLAINER_LABELS.get, key="explainer", persist_state="session", help=EXPLAINER_HELP
    )
    problem = cache.explainer_problem(run, name)
    if problem is None:
        return name
    st.sidebar.warning(f"{EXPLAINER_LABELS[name]} cannot explain these images ({problem}), so GradCAM is shown.")
    return "gradcam"


def filters(split, scores) -> np.ndarray:
    """The sidebar's filters and sort order, applied to the split: the indices to show."""
    sb = st.sidebar
    labels, preds = split.labels.numpy(), scores["preds"]
    keep = np.ones(len(labels), bool)
    # Each filter keeps its choice for the session: Streamlit forgets the widgets of a page not drawn.
    cls = sb.selectbox("True class", [ANY, *CLASSES], key="filter-class", persist_state="session")
    if cls != ANY:
        keep &= labels == CLASSES.index(cls)
    pred = sb.selectbox("Predicted class", [ANY, *CLASSES], key="filter-predicted", persist_state="session")
    if pred != ANY:
        keep &= preds == CLASSES.index(pred)
    result = sb.selectbox("Prediction", [ANY, "Correct", "Wrong"], key="filter-result", persist_state="session")
    if result != ANY:
        keep &= (labels == preds) == (result == "Correct")
    if split.child is not None:
        conf = sb.selectbox(
            "Confounder",
            [ANY, "Child (growth plates)", "Adult"],
            help="Synthetic data only: which images carry the planted shortcut.",
            key="filter-confounder",
            persist_state="session",
        )
        if conf != ANY:
            keep &= split.child.numpy() == conf.startswith("Child")
    order = sb.selectbox("Sort", ["AP, lowest first", "AP, highest first", "Image number"], key="filter-sort", persist_state="session")
    idx = np.nonzero(keep)[0]
    if order != "Image number":
        idx = idx[np.argsort(scores["ap"][idx], kind="stable")]
        if order == "AP, highest first":
            idx = idx[::-1]
    return idx


def on_mark(side: str, index: int, explainer: str) -> None:
    refused = state.mark(run, side, index, explainer)
    st.session_state["mark_message"] = None if refused is None else (index, refused)


def on_figure(index: int) -> None:
    """Add a test or shortcut-test image to Compare's Figure 3, or take it out (it is never marked as an exemplar)."""
    default = results.default_figure_rows(split, torch.from_numpy(scores["ap"]))
    refused = state.toggle_figure_row(run, split_name, index, default)
    st.session_state["mark_message"] = None if refused is None else (index, refused)


def on_suggest() -> None:
    """Suggest a pair from occlusion maps, and show occlusion, the maps it was read from."""
    try:
        good, bad, found = cache.suggestion(run)
    except ValueError as exc:
        st.session_state["mark_message"] = (None, str(exc))
        return
    state.set_pair(run, good, bad, explainers.FAITHFUL, state.SUGGEST_RULE)
    st.session_state["explainer"] = explainers.FAITHFUL
    st.session_state["mark_message"] = None
    st.session_state["suggested"] = (
        f"Suggested from occlusion maps of {found['explained']} correctly classified training images: bad #{bad} keeps "
        f"{found['bad_lung_share']:.0%} of its map on the lungs, good #{good} keeps {found['good_lung_share']:.0%}."
    )


def explained(explainer: str, share: float | None) -> str:
    """The caption's part naming the map shown, with the share of an occlusion map that lies on the lungs."""
    return f"· {EXPLAINER_LABELS[explainer]}" + ("" if share is None else f" {share:.0%} on lungs")


def caption(split, scores, i: int, shown: str = "") -> str:
    """The tile's caption, with non-breaking spaces inside each part, so that "AP" never wraps away from its value.

    AP is always GradCAM's (the sort uses it for the whole split); ``shown`` names the map on the tile.
    """
    true, pred = CLASSES[int(split.labels[i])], CLASSES[int(scores["preds"][i])]
    parts = [f"#{i} {true}", f"→ {pred} {'✓' if true == pred else '✗'}", f"· AP {scores['ap'][i]:.2f}"]
    if split.child is not None and bool(split.child[i]):
        parts.append("· child")
    return " ".join(views.nowrap(p) for p in [*parts, shown] if p)


@st.dialog("One image, large", width="large")
def big_view(split_name: str, split, scores, i: int) -> None:
    """One image large, over the page where it was clicked: input, GradCAM and occlusion, with opacity and colour map."""
    st.markdown(f"**Image {caption(split, scores, i)}**")
    c1, c2 = st.columns([3, 1])
    alpha = c1.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05)
    cmap = c2.selectbox("Colour map", views.COLORMAPS)
    image, mask, pred = split.float_images(i)[0].numpy(), split.masks[i].numpy(), CLASSES[int(scores["preds"][i])]
    a, b, c = st.columns(3)
    a.image(views.with_outline(image, mask), caption="Input, lungs outlined", width="stretch")
    b.image(overlay(image, scores["cams"][i], alpha, cmap), caption=f"GradCAM for '{pred}': the paper's map", width="stretch")
    problem = cache.explainer_problem(run, "occlusion")
    if problem is not None:
        c.info(f"No occlusion map: {problem}.")
        return
    with st.spinner("Occlusion map…"):
        occlusion = cache.maps(run, "unrefined", split_name, "occlusion", [i])[0]
    c.image(overlay(image, occlusion, alpha, cmap), caption=f"Occlusion for '{pred}': what the model uses", width="stretch")
    st.caption("Both maps explain the unrefined model's predicted class. GradCAM at this layer can hide a shortcut that occlusion shows.")


def suggested_tiles(images, good: int, bad: int) -> None:
    """The suggested pair with the occlusion maps it was read from, so that the suggestion can be judged at once."""
    maps = cache.maps(run, "unrefined", "train", explainers.FAITHFUL, [good, bad])
    for col, side, i, m in zip(st.columns(4)[:2], state.SIDES, (good, bad), maps, strict=True):
        col.image(views.pair_tile(images[i], m, views.GOOD_RGB if side == "good" else views.BAD_RGB), caption=f"{side} #{i}, occlusion")


available = run_data.split_names(run)
split_name = SPLITS[
    st.sidebar.radio("Images", [label for label, name in SPLITS.items() if name in available], key="images", persist_state="session")
]
explainer = explainer_choice()
if gallery.explore_section(run, explainer):  # real radiographs instead of a split: studio/gallery.py
    st.stop()
label = EXPLAINER_LABELS[explainer]
split = cache.split(run, split_name)
scores = cache.scores(run, "unrefined", split_name)
images = split.float_images()[:, 0].numpy()
picking = split_name == "train"
pair = state.pair(run)

with st.container(border=True):
    c1, c2, c3 = st.columns([3, 2, 2])
    shown = [f"**{side}**: " + ("none yet" if pair[side] is None else f"#{pair[side]}") for side in state.SIDES]
    c1.markdown("Your pair · " + " · ".join(shown))
    if picking:
        c2.button("Suggest a pair from occlusion", icon=":material/auto_awesome:", on_click=on_suggest, help=SUGGEST_HELP)
    if pair["good"] is not None and pair["bad"] is not None:
        c3.page_link(pages.REFINE, label="Next: refine with this pair", icon=":material/arrow_forward:")
    message = st.session_state.pop("mark_message", None)  # shown once, next to the tile it is about
    if message is not None and message[0] is None:
        st.warning(message[1])
    elif st.session_state.get("suggested") and picking:
        st.success(st.session_state.pop("suggested"))
        suggested_tiles(images, pair["good"], pair["bad"])
    if picking:
        st.caption(
            f"Press **Good** under an image whose {label} map sits on the lungs, and **Bad** under one whose map lies elsewhere "
            "(the shoulders, the text markers). Press again to unmark. The pair remembers the map each mark was made on."
        )
    else:
        st.caption(
            "The pair is marked on training images, which refinement trains on; test images stay unseen. Switch in the sidebar. "
            "**Figure 3** puts an image into the before-and-after figure on Compare."
        )
st.html(f"<style>{MARK_CSS}</style>")

idx = filters(split, scores)
if len(idx) == 0:
    st.info("No image matches these filters: loosen them in the sidebar.")
    st.stop()
n_pages = math.ceil(len(idx) / PER_PAGE)
if explainer == "gradcam":
    st.caption(
        f"{len(idx)} of {len(split)} images. Left: the input; right: the **unrefined** model's GradCAM for its predicted class, "
        "over the input. These are the explanations before refinement: the ones you judge. GradCAM at this layer can hide "
        "a shortcut: choose Occlusion in the sidebar to see what the model uses."
    )
else:
    st.caption(
        f"{len(idx)} of {len(split)} images. Left: the input; right: the **unrefined** model's {label} map for its predicted "
        "class, over the input: where hiding a patch lowers the model's confidence, so it shows what the model uses "
        "(GradCAM at this layer can hide a shortcut). Computed for this page's images only; AP and the sort are GradCAM's, "
        "and each caption says how much of the occlusion map lies on the lungs."
    )
page = st.pagination(n_pages, key=f"page-{split_name}", persist_state="session") if n_pages > 1 else 1
shown = idx[(page - 1) * PER_PAGE : page * PER_PAGE].tolist()
with st.spinner(f"{label} maps of the {len(shown)} images on this page…", show_time=True):
    maps = cache.maps(run, "unrefined", split_name, explainer, shown)
shares = faithfulness.lung_share(torch.from_numpy(maps), split.masks[shown]).tolist() if explainer != "gradcam" else [None] * len(shown)
in_figure = state.figure_rows(run, split_name)
if in_figure is None and not picking:
    in_figure = results.default_figure_rows(split, torch.from_numpy(scores["ap"]))
cols = st.columns(COLUMNS)
for k, (i, m, share) in enumerate(zip(shown, maps, shares, strict=True)):
    side = next((r for r in state.SIDES if pair[r] == i and picking), None)
    frame = {"good": views.GOOD_RGB, "bad": views.BAD_RGB, None: None}[side]
    with cols[k % COLUMNS].container(border=True):
        st.image(views.pair_tile(images[i], m, frame), caption=caption(split, scores, i, explained(explainer, share)), width="stretch")
        row = st.container(horizontal=True, gap="small")
        if picking:
            for r in state.SIDES:
                row.button(
                    r.capitalize(),
                    key=f"{r}-{i}",
                    type="primary" if side == r else "secondary",
                    help=f"Mark #{i} as the {r} explanation, judged on its {label} map. Press again to unmark.",
                    on_click=on_mark,
                    args=(r, i, explainer),
                )
        else:
            row.button(
                "Figure 3",
                key=f"figure-{split_name}-{i}",
                type="primary" if i in in_figure else "secondary",
                help=f"{'Take #' if i in in_figure else 'Put #'}{i} {'out of' if i in in_figure else 'into'} Figure 3 on Compare. "
                "It is not marked: the pair stays on training images.",
                on_click=on_figure,
                args=(i,),
            )
        row.button(
            "Zoom",
            key=f"zoom-{i}",
            help="The input, its GradCAM and its occlusion map, large and side by side",
            on_click=st.session_state.__setitem__,
            args=("zoom", (split_name, i)),
        )
        if message is not None and message[0] == i:
            st.warning(message[1])

zoom = st.session_state.pop("zoom", None)
if zoom is not None and zoom[0] == split_name:
    big_view(split_name, split, scores, zoom[1])
if page < n_pages:  # after drawing: the next page's maps, while the user looks at this one
    cache.prefetch_maps(run, "unrefined", split_name, explainer, idx[page * PER_PAGE : (page + 1) * PER_PAGE].tolist())
