"""Data and model: choose synthetic phantoms or a data set folder, look at it, train or open a run."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import streamlit as st

from exbl_core import config, errors, files, run_data, run_models, runs, weights
from exbl_core.data import CLASSES, DataError
from exbl_core.synthetic import SyntheticConfig
from studio import cache, gallery, live, pages, state, tasks, views

SYNTHETIC, FOLDER = "Synthetic phantoms (built in, no download)", "A data set folder"
PRESETS = {"Demo (about 8 minutes of training on 2 CPU cores)": config.DEMO, "Quick (tiny, under a minute)": config.QUICK}
SIZES = (64, 96, 128, 160, 224, 299)
STARTS = {"Random weights": weights.RANDOM, "ImageNet weights (as in the paper)": weights.IMAGENET, "A weights file": weights.FILE}
# A data set folder trains as the command line trains it: with the paper's settings.
PAPER = config.preset(real_data=True)

pages.setup("Data and model")


def synthetic_settings() -> tuple[SyntheticConfig, config.Preset]:
    """The phantom's few settings a user may want to change; the rest keep the preset's values."""
    name = st.radio("Preset", list(PRESETS), horizontal=True)
    preset = PRESETS[name]
    c1, c2, c3, c4 = st.columns(4)
    n_train = c1.number_input("Training images per class", 2, 2000, preset.data.n_train, key=f"n_train-{name}")
    size = c2.selectbox("Image size (pixels)", SIZES, index=SIZES.index(preset.data.size), key=f"size-{name}")
    strength = c3.slider(
        "Confounder strength",
        0.0,
        1.0,
        preset.data.confounder_strength,
        0.05,
        key=f"strength-{name}",
        help="Share of Viral Pneumonia training images showing a child: 1.0 ties the class to children completely.",
    )
    seed = c4.number_input("Seed", 0, 10_000, preset.data.seed, key=f"seed-{name}")
    return replace(preset.data, n_train=int(n_train), size=int(size), confounder_strength=float(strength), seed=int(seed)), preset


def folder_settings() -> config.FolderSpec:
    st.caption(
        "The COVID-19 Radiography Database layout: one folder per class (COVID, Lung_Opacity, Normal, Viral Pneumonia), "
        "each with images/ and masks/ holding files of the same names."
    )
    path = st.text_input("Folder", placeholder="/data/COVID-19_Radiography_Dataset")
    c1, c2, c3, c4, c5 = st.columns(5)
    size = c1.selectbox("Image size (pixels)", SIZES, index=SIZES.index(224))
    train = c2.number_input("Training images per class", 1, 10_000, 800)
    val = c3.number_input("Validation per class", 1, 10_000, 300)
    test = c4.number_input("Test per class", 1, 10_000, 200)
    seed = c5.number_input("Split seed", 0, 10_000, 0)
    skip_bad = st.checkbox("Skip unreadable images and list them, instead of stopping at the first one")
    t, r = PAPER.train, PAPER.refine
    st.caption(
        f"A data set folder trains with the paper's settings, as the command line does: Adam at learning rate {t.lr:g}, "
        f"up to {t.epochs} epochs for the unrefined model and up to {r.epochs} for refinement, early stopping with patience "
        f"{t.patience}. Expect hours on a CPU."
    )
    return config.FolderSpec(path.strip(), int(size), int(train), int(val), int(test), int(seed), skip_bad)


def start_setting(real_data: bool) -> str:
    """The backbone to start from: ImageNet by default for a data set folder when it is cached."""
    cached = weights.imagenet_cached()
    choice = st.radio(
        "Start the model from",
        list(STARTS),
        index=1 if real_data and cached else 0,
        horizontal=True,
        key=f"start-{real_data}",
        help="With ImageNet weights or a file, features[:6] are frozen, as in the paper; from random weights every layer trains.",
    )
    if not cached and (real_data or STARTS[choice] == weights.IMAGENET):
        st.caption(f"ImageNet weights are not cached at `{weights.imagenet_file()}`: run `{weights.DOWNLOAD_COMMAND}` to fetch them.")
    if STARTS[choice] == weights.FILE:
        return st.text_input("Weights file: a torchvision MobileNetV2 state dict", key="weights_file").strip()
    return STARTS[choice]


def new_run_form() -> None:
    source = st.radio("Data", [SYNTHETIC, FOLDER], horizontal=True)
    if source == SYNTHETIC:
        spec, preset = synthetic_settings()
    else:
        spec, preset = folder_settings(), PAPER
    start = start_setting(real_data=source == FOLDER)
    c1, c2 = st.columns(2)
    epochs = c1.number_input("Training epochs (early stopping may end sooner)", 1, 200, preset.train.epochs)
    st.session_state.setdefault("run_name", f"run-{time.strftime('%Y%m%d-%H%M%S')}")
    name = c2.text_input("Run name (a folder under runs/)", key="run_name")
    if st.button("Create the run", type="primary", icon=":material/add:"):
        if isinstance(spec, config.FolderSpec) and not spec.path:
            st.error("Type the data set folder's path first.")
            return
        if not start:
            st.error("Type the weights file's path first.")
            return
        # An empty name would make the runs folder itself the run, beside every other run: take a fresh one.
        name = name.strip() or f"run-{time.strftime('%Y%m%d-%H%M%S')}"
        if Path(name).name != name or name in (".", ".."):
            st.error(f"The run name {name!r} must be a plain folder name, without slashes.")
            return
        try:
            with st.spinner("Checking the data and writing the split…"):
                run = run_data.new_run(cache.runs_dir() / name, spec, replace(preset.train, epochs=int(epochs)), preset.refine, start=start)
        except (DataError, errors.RunError, ValueError, OSError) as exc:
            st.error(f"Could not create the run: {exc}")
            return
        state.select_run(run)
        st.session_state.pop("run_name")
        st.rerun()


def open_run_form() -> None:
    saved = runs.list_runs(cache.runs_dir())
    if not saved:
        st.caption(f"No saved runs in `{cache.runs_dir()}` yet.")
        return
    labels = {f"{r.name} ({r.stage()})": r for r in saved}
    choice = st.selectbox("Saved runs, newest first", list(labels))
    if st.button("Open this run", icon=":material/folder_open:"):
        state.select_run(labels[choice])
        st.rerun()


def data_summary(run: runs.Run) -> None:
    """Counts per class and split, and a sample grid with the lung masks outlined."""
    try:
        data = cache.data(run)
    except DataError as exc:
        st.error(f"This run's data cannot be read: {exc}")
        return
    table = {split: list(s.class_counts().values()) for split, s in data.items()}
    train = data["train"]
    if train.child is not None:
        table["train: child"] = [int(train.child[train.labels == c].sum()) for c in range(len(CLASSES))]
    st.dataframe({"class": list(CLASSES), **table}, hide_index=True)
    skipped = files.read_json(run.file(runs.SPLIT)).get("skipped", [])
    if skipped:
        st.warning(f"{len(skipped)} files were skipped: " + "; ".join(skipped[:5]) + (" …" if len(skipped) > 5 else ""))
    samples = [i for c in range(len(CLASSES)) for i in (train.labels == c).nonzero()[:2, 0].tolist()]
    st.caption("Training samples. The cyan line outlines the lung mask: Activation Precision counts GradCAM's top pixels inside it.")
    cols = st.columns(len(samples) or 1)
    images = train.float_images()[:, 0].numpy()
    for col, i in zip(cols, samples, strict=True):
        child = train.child is not None and bool(train.child[i])
        col.image(
            views.with_outline(images[i], train.masks[i].numpy()), caption=f"{CLASSES[int(train.labels[i])]}{' · child' if child else ''}"
        )


run = state.current_run()
with st.expander("Start a new run, or open a saved one", expanded=run is None):
    tab_new, tab_open = st.tabs(["Start a new run", "Open a saved run"])
    with tab_new:
        new_run_form()
    with tab_open:
        open_run_form()

gallery.data_page_section()  # real radiographs of any classes, for looking: studio/gallery.py

if run is None:
    st.info("No run yet: choose the data above and press **Create the run**, or open a saved run.")
    st.stop()

st.subheader(f"Run '{run.name}'")
data_summary(run)

st.subheader("Unrefined model")
job = live.job_on(run)
training_here = job is not None and job.kind in ("train", "demo")
locked = live.other_job_note(run, ("train", "demo"))
if not training_here:
    label = "Train again (replaces the model and any refinement)" if run.has(runs.UNREFINED) else "Train the unrefined model"
    epochs = run_data.train_config(run, "train").epochs
    start = run_models.start_weights(run)
    st.caption(
        f"{epochs} epochs at most, with early stopping on validation loss; the best epoch is kept."
        + ("" if start is None else f" Starts from {weights.describe(start)}.")
    )
    primary = "secondary" if run.has(runs.UNREFINED) else "primary"
    if st.button(label, type=primary, icon=":material/model_training:", disabled=locked) and not live.refused():
        state.forget_pair(run)
        live.start("train", run, tasks.train_work(run, cache.data(run), cache.device()))
live.job_panel(run, ("train", "demo"), phase="unrefined")
if run.has(runs.UNREFINED) and not training_here:
    st.page_link(pages.EXPLORE, label="Next: explore its explanations and mark a good and a bad one", icon=":material/arrow_forward:")
