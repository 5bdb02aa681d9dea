"""Explore: browse images with their GradCAM, mark one good and one bad explanation."""

from __future__ import annotations

import math

import numpy as np
import streamlit as st
import torch

from exbl_core import pipeline
from exbl_core.data import CLASSES
from exbl_core.figures import overlay
from studio import cache, live, pages, progress, state, views

PER_PAGE = 12
COLUMNS = 3
ANY = "Any"
SPLITS = {
    "Training images (pick the pair here)": "train",
    "Test images": "test",
    "Shortcut test images (children in every class)": "shortcut_test",
}
# A marked button takes its frame's colour (Streamlit's primary colour is red for both).
MARK_CSS = "".join(
    f'[class*="st-key-{role}-"] button[data-testid="stBaseButton-primary"] {{background: rgb{rgb}; border-color: rgb{rgb}; color: white}}'
    for role, rgb in (("good", views.GOOD_RGB), ("bad", views.BAD_RGB))
)

pages.setup("Explore")

run = pages.trained_run()
job = live.job_on(run)
if job is not None and job.kind in ("train", "demo") and progress.current_step(job.events) == 0:
    live.other_job_note(run, (), "Until it ends, these explanations come from the best epoch so far, and they change as it trains.")


def filters(split, scores) -> np.ndarray:
    """The sidebar's filters and sort order, applied to the split: the indices to show."""
    sb = st.sidebar
    labels, preds = split.labels.numpy(), scores["preds"]
    keep = np.ones(len(labels), bool)
    cls = sb.selectbox("True class", [ANY, *CLASSES])
    if cls != ANY:
        keep &= labels == CLASSES.index(cls)
    pred = sb.selectbox("Predicted class", [ANY, *CLASSES])
    if pred != ANY:
        keep &= preds == CLASSES.index(pred)
    result = sb.selectbox("Prediction", [ANY, "Correct", "Wrong"])
    if result != ANY:
        keep &= (labels == preds) == (result == "Correct")
    if split.child is not None:
        conf = sb.selectbox(
            "Confounder", [ANY, "Child (growth plates)", "Adult"], help="Synthetic data only: which images carry the planted shortcut."
        )
        if conf != ANY:
            keep &= split.child.numpy() == conf.startswith("Child")
    order = sb.selectbox("Sort", ["AP, lowest first", "AP, highest first", "Image number"])
    idx = np.nonzero(keep)[0]
    if order != "Image number":
        idx = idx[np.argsort(scores["ap"][idx], kind="stable")]
        if order == "AP, highest first":
            idx = idx[::-1]
    return idx


def on_mark(role: str, index: int) -> None:
    refused = state.mark(run, role, index)
    st.session_state["mark_message"] = None if refused is None else (index, refused)


def on_suggest(scores: dict, labels: torch.Tensor) -> None:
    try:
        good, bad = pipeline.auto_pick({k: torch.from_numpy(v) for k, v in scores.items()}, labels)
    except ValueError as exc:
        st.session_state["mark_message"] = (None, str(exc))
        return
    state.set_pair(run, good, bad)
    st.session_state["mark_message"] = None
    st.session_state["suggested"] = (
        f"Suggested: good #{good} (highest AP), bad #{bad} (lowest AP), among correctly classified training images."
    )


def caption(split, scores, i: int) -> str:
    """The tile's caption, with non-breaking spaces inside each part, so that "AP" never wraps away from its value."""
    true, pred = CLASSES[int(split.labels[i])], CLASSES[int(scores["preds"][i])]
    parts = [f"#{i} {true}", f"→ {pred} {'✓' if true == pred else '✗'}", f"· AP {scores['ap'][i]:.2f}"]
    if split.child is not None and bool(split.child[i]):
        parts.append("· child")
    return " ".join(views.nowrap(p) for p in parts)


@st.dialog("One image, large", width="large")
def big_view(split, scores, i: int) -> None:
    """One image large, over the page where it was clicked: input, CAM and overlay, with opacity and colour map."""
    st.markdown(f"**Image {caption(split, scores, i)}**")
    c1, c2 = st.columns([3, 1])
    alpha = c1.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05)
    cmap = c2.selectbox("Colour map", views.COLORMAPS)
    image, cam, mask = split.float_images(i)[0].numpy(), scores["cams"][i], split.masks[i].numpy()
    a, b, c = st.columns(3)
    a.image(views.with_outline(image, mask), caption="Input, lungs outlined", width="stretch")
    b.image(views.cam_rgb(cam, cmap), caption=f"Unrefined model's GradCAM for '{CLASSES[int(scores['preds'][i])]}'", width="stretch")
    c.image(overlay(image, cam, alpha, cmap), caption="Overlay", width="stretch")


available = pipeline.split_names(run)
split_name = SPLITS[st.sidebar.radio("Images", [label for label, name in SPLITS.items() if name in available])]
split = cache.split(run, split_name)
scores = cache.scores(run, "unrefined", split_name)
picking = split_name == "train"
pair = state.pair(run)

with st.container(border=True):
    c1, c2, c3 = st.columns([3, 2, 2])
    shown = [f"**{role}**: " + ("none yet" if pair[role] is None else f"#{pair[role]}") for role in state.ROLES]
    c1.markdown("Your pair · " + " · ".join(shown))
    if picking:
        train_labels = split.labels
        c2.button("Suggest a pair by AP", icon=":material/auto_awesome:", on_click=on_suggest, args=(scores, train_labels))
    if pair["good"] is not None and pair["bad"] is not None:
        c3.page_link(pages.REFINE, label="Next: refine with this pair", icon=":material/arrow_forward:")
    message = st.session_state.pop("mark_message", None)  # shown once, next to the tile it is about
    if message is not None and message[0] is None:
        st.warning(message[1])
    elif st.session_state.get("suggested"):
        st.success(st.session_state.pop("suggested"))
    if picking:
        st.caption(
            "Press **Good** under an image whose GradCAM sits on the lungs, and **Bad** under one that looks elsewhere "
            "(the shoulders, the text markers). Press again to unmark."
        )
    else:
        st.caption("The pair is marked on training images, which refinement trains on; test images stay unseen. Switch in the sidebar.")
st.html(f"<style>{MARK_CSS}</style>")

idx = filters(split, scores)
if len(idx) == 0:
    st.info("No image matches these filters: loosen them in the sidebar.")
    st.stop()
n_pages = math.ceil(len(idx) / PER_PAGE)
st.caption(
    f"{len(idx)} of {len(split)} images. Left: the input; right: the **unrefined** model's GradCAM for its predicted class, "
    "over the input. These are the explanations before refinement: the ones you judge."
)
page = st.pagination(n_pages, key=f"page-{split_name}") if n_pages > 1 else 1
images = split.float_images()[:, 0].numpy()
cols = st.columns(COLUMNS)
for k, i in enumerate(idx[(page - 1) * PER_PAGE : page * PER_PAGE].tolist()):
    role = next((r for r in state.ROLES if pair[r] == i and picking), None)
    frame = {"good": views.GOOD_RGB, "bad": views.BAD_RGB, None: None}[role]
    with cols[k % COLUMNS].container(border=True):
        st.image(views.pair_tile(images[i], scores["cams"][i], frame), caption=caption(split, scores, i), width="stretch")
        row = st.container(horizontal=True, gap="small")
        if picking:
            for r in state.ROLES:
                row.button(r.capitalize(), key=f"{r}-{i}", type="primary" if role == r else "secondary", on_click=on_mark, args=(r, i))
        row.button("Zoom", key=f"zoom-{i}", on_click=st.session_state.__setitem__, args=("zoom", (split_name, i)))
        if message is not None and message[0] == i:
            st.warning(message[1])

zoom = st.session_state.pop("zoom", None)
if zoom is not None and zoom[0] == split_name:
    big_view(split, scores, zoom[1])
