"""Small drawing helpers: images for st.image, the training chart, empty states.

Images are built as uint8 RGB arrays with ``exbl_core.figures`` (overlay, colorize,
mask_outline) so the app and the paper figures colour CAMs the same way.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from exbl_core.figures import colorize, mask_outline, overlay

GOOD_RGB = (30, 180, 60)
BAD_RGB = (220, 40, 40)
OUTLINE_RGB = (0, 220, 255)
COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma")


def empty_state(message: str, page: str, label: str) -> None:
    """What to do next, with a link to the page that does it: no empty page is a dead end."""
    st.info(message)
    st.page_link(page, label=label, icon=":material/arrow_forward:")


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
    """Input beside its GradCAM overlay, as one image: one element per grid cell keeps pages fast."""
    gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
    return framed(np.concatenate([gray_rgb(image), gap, overlay(image, cam, alpha)], axis=1), frame)


def run_attempt(events: list[dict], phase: str) -> list[dict]:
    """The events of the latest attempt at ``phase``: a restarted refinement starts a new curve."""
    mine = [e for e in events if e.get("phase") == phase]
    starts = [i for i, e in enumerate(mine) if e["type"] == "start"]
    if starts:
        return mine[starts[-1] :]
    attempt: list[dict] = []
    for e in mine:
        if e["type"] == "epoch_end" and attempt and e["epoch"] <= max((a["epoch"] for a in attempt if a["type"] == "epoch_end"), default=0):
            attempt = []
        attempt.append(e)
    return attempt


def curves(events: list[dict]) -> go.Figure:
    """Losses (per batch and per epoch) on the left; validation accuracy and AP on the right."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "Validation"), horizontal_spacing=0.1)
    batches = [e for e in events if e["type"] == "batch_end"]
    epochs = [e for e in events if e["type"] == "epoch_end"]
    if batches:
        x = [e["epoch"] - 1 + e["batch"] / e["batches"] for e in batches]
        fig.add_scatter(
            x=x, y=[e["loss"] for e in batches], name="batch loss", mode="lines", line={"width": 1, "color": "#bbbbbb"}, row=1, col=1
        )
    ex = [e["epoch"] for e in epochs]
    refining = any("expl" in e for e in epochs)  # without the eXBL term, total and CE are the same line
    for key, name in (("loss", "total"), ("ce", "CE"), ("expl", "explanation")):
        if key == "ce" or refining:
            fig.add_scatter(x=ex, y=[e.get(key) for e in epochs], name=name, mode="lines+markers", row=1, col=1)
    for key, name in (("val_accuracy", "val accuracy"), ("val_ap", "val AP")):
        fig.add_scatter(x=ex, y=[e[key] for e in epochs], name=name, mode="lines+markers", row=1, col=2)
    fig.update_xaxes(title_text="epoch", rangemode="tozero")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=330, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return fig
