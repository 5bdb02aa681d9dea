"""Small drawing helpers: images for st.image, the training chart, verdicts, empty states.

Images are built as uint8 RGB arrays with ``exbl_core.figures`` (overlay, colorize,
mask_outline) so the app and the paper figures colour CAMs the same way.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from exbl_core import verdict as verdicts
from exbl_core.figures import colorize, mask_outline, overlay

GOOD_RGB = (30, 180, 60)
BAD_RGB = (220, 40, 40)
OUTLINE_RGB = (0, 220, 255)
COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma")
LINE_TOTAL = {"color": "#222222", "dash": "dash", "width": 2}
EXPLANATION_SILENT = "the explanation loss is 0: only cross-entropy trains now"


def empty_state(message: str, page: str, label: str) -> None:
    """What to do next, with a link to the page that does it: no empty page is a dead end."""
    st.info(message)
    st.page_link(page, label=label, icon=":material/arrow_forward:")


def nowrap(text: str) -> str:
    """``text`` with non-breaking spaces: a caption may wrap between its parts, never inside one."""
    return text.replace(" ", "\u00a0")


def gray_rgb(image: np.ndarray) -> np.ndarray:
    """A grayscale image [H,W] in [0, 1] as uint8 RGB."""
    return np.repeat((np.clip(image, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def with_outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with its lung mask's boundary drawn in: what AP counts as 'inside'."""
    out = gray_rgb(image)
    out[mask_outline(mask)] = OUTLINE_RGB
    return out


def cam_rgb(cam: np.ndarray, cmap: str = "jet") -> np.ndarray:
    return (colorize(cam, cmap) * 255).round().astype(np.uint8)


def framed(rgb: np.ndarray, color: tuple[int, int, int] | None, width: int = 4) -> np.ndarray:
    """A coloured frame drawn into the pixels, so a marked image stands out in any layout."""
    if color is None:
        return rgb
    out = rgb.copy()
    out[:width], out[-width:], out[:, :width], out[:, -width:] = color, color, color, color
    return out


def pair_tile(image: np.ndarray, cam: np.ndarray, frame: tuple[int, int, int] | None = None, alpha: float = 0.45) -> np.ndarray:
    """Input beside the overlay of its map (GradCAM or occlusion), as one image: one element per grid cell keeps pages fast."""
    gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
    return framed(np.concatenate([gray_rgb(image), gap, overlay(image, cam, alpha)], axis=1), frame)


def curves(events: list[dict]) -> go.Figure:
    """Losses (per batch and per epoch) on the left; validation accuracy and AP, and active triplets, on the right.

    The total is dashed: without the eXBL term, or once it is 0, total and CE are the same
    line, and a solid total would hide CE. When no triplet is active any more the chart
    says so, since from then on refinement is plain cross-entropy training.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "Validation"), horizontal_spacing=0.1)
    batches = [e for e in events if e["type"] == "batch_end"]
    epochs = [e for e in events if e["type"] == "epoch_end"]
    if batches:
        x = [e["epoch"] - 1 + e["batch"] / e["batches"] for e in batches]
        fig.add_scatter(
            x=x,
            y=[e["loss"] for e in batches],
            name="batch loss",
            mode="lines+markers",  # markers: the first batch is a single point, which a line alone does not draw
            line={"width": 1, "color": "#bbbbbb"},
            marker={"size": 3},
            row=1,
            col=1,
        )
    ex = [e["epoch"] for e in epochs]
    refining = any("expl" in e for e in epochs)
    lines = {"ce": ("CE", {"color": "#1f77b4"}), "expl": ("explanation", {"color": "#d62728"}), "loss": ("total", LINE_TOTAL)}
    for key, (name, line) in lines.items():
        if key == "ce" or refining:
            fig.add_scatter(x=ex, y=[e.get(key) for e in epochs], name=name, mode="lines+markers", line=line, row=1, col=1)
    right = {"val_accuracy": ("val accuracy", "#2ca02c"), "val_ap": ("val AP", "#9467bd")}
    if refining:
        right["active_triplets"] = ("active triplets (share)", "#ff7f0e")
    for key, (name, color) in right.items():  # fixed colours: a metric looks the same on every page
        fig.add_scatter(x=ex, y=[e.get(key) for e in epochs], name=name, mode="lines+markers", line={"color": color}, row=1, col=2)
    if refining and epochs and epochs[-1].get("active_triplets") == 0:
        fig.add_annotation(
            text=EXPLANATION_SILENT, x=0.5, y=1.0, xref="x domain", yref="y domain", showarrow=False, bgcolor="#fff3cd", row=1, col=1
        )
    fig.update_xaxes(title_text="epoch", rangemode="tozero")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=330, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return fig


def verdict_badge(verdict: verdicts.Verdict) -> None:
    """The verdict's label as a badge: green only for a result that counts as an improvement."""
    colour = {"partly": "orange", verdicts.NOTHING_TO_UNLEARN: "gray"}.get(verdict.label, "red")
    st.badge(verdict.label, color="green" if verdict.success else colour)


SHORTCUT_TEST_WORDS = "the shortcut test (a test set with children in every class)"


def rule_caption(oracle: dict | None) -> None:
    """How every verdict above was computed: once per page, below the verdicts, not under each of them."""
    st.caption(_rule(oracle))


def _rule(oracle: dict | None) -> str:
    accuracy = f"test accuracy at least {verdicts.MIN_TEST_ACCURACY:.2f}"
    if oracle is not None:
        return (
            f"The rule: 'unlearned' recovers at least {verdicts.UNLEARNED:.0%} of the oracle's accuracy on {SHORTCUT_TEST_WORDS}, "
            f"'partly' at least {verdicts.PARTLY:.0%}, each with {accuracy}; 'nothing to unlearn' when the oracle is less "
            f"than {verdicts.MIN_ROOM:.2f} ahead of the unrefined model on the shortcut test."
        )
    return (
        f"The rule without an oracle: 'shortcut reduced' needs the shortcut gap (test accuracy minus accuracy on "
        f"{SHORTCUT_TEST_WORDS}) to fall "
        f"by at least {verdicts.GAP_HALVED:.0%}, with {accuracy}; 'nothing to unlearn' when that gap was below {verdicts.MIN_ROOM:.2f} "
        f"before refinement. An oracle, trained without the shortcut, gives the full verdict."
    )


def model_summary(unrefined: dict, model: dict, oracle: dict | None = None, name: str = "eXBL") -> verdicts.Verdict | None:
    """One refined model against the unrefined one: the computed verdict, its reason, and the numbers.

    ``unrefined``, ``model`` and ``oracle`` are one model's metrics per split, as in
    metrics.json. A change is coloured only when the verdict calls it an improvement, so
    a smaller gap from a model that still uses the shortcut never shows a green arrow.
    Returns the verdict, or None when the data has no shortcut test to judge by.
    """
    verdict = None
    if "shortcut_test" in unrefined and "shortcut_test" in model:
        verdict = verdicts.shortcut_verdict(unrefined, model, oracle)
        with st.container(horizontal=True, vertical_alignment="center"):
            st.markdown(f"**{name}**", width="content")
            verdict_badge(verdict)
            st.markdown(verdict.sentence[0].upper() + verdict.sentence[1:] + ".", width="content")
    else:
        st.info(f"{name}: no verdict, since only the synthetic data has a shortcut test. Read the numbers with care.")
    success = verdict is not None and verdict.success
    cards = [("Accuracy, confounded test", model["test"]["accuracy"], unrefined["test"]["accuracy"], "off")]
    if verdict is not None:
        st_before, st_after = unrefined["shortcut_test"]["accuracy"], model["shortcut_test"]["accuracy"]
        gap_before, gap_after = unrefined["test"]["accuracy"] - st_before, model["test"]["accuracy"] - st_after
        cards += [
            ("Accuracy, shortcut test", st_after, st_before, "normal" if success else "off"),
            ("Shortcut gap", gap_after, gap_before, "inverse" if success else "off"),
        ]
    cards.append(("Activation Precision, test", model["test"]["activation_precision"], unrefined["test"]["activation_precision"], "off"))
    plain = {"Accuracy, shortcut test": "The test set with children in every class: a model that uses the shortcut loses accuracy here."}
    for col, (title, after, before, color) in zip(st.columns(len(cards)), cards, strict=True):
        col.metric(title, f"{after:.3f}", f"{after - before:+.3f} vs {before:.3f} unrefined", delta_color=color, help=plain.get(title))
    return verdict
