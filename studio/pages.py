"""Page paths for st.page_link and the shared page setup, in one place."""

from __future__ import annotations

import functools

import numpy as np
import streamlit as st
from PIL import Image

from exbl_core import runs
from studio import cache, example, state, views

HOME = "app_pages/0_Home.py"
DATA = "app_pages/1_Data_and_model.py"
EXPLORE = "app_pages/2_Explore.py"
REFINE = "app_pages/3_Refine.py"
COMPARE = "app_pages/4_Compare.py"


@functools.cache
def icon() -> Image.Image:
    """The tab's icon: two lungs on a dark square, drawn here and served by the app itself.

    A Material icon name as page icon makes the browser fetch the favicon from a font
    host on the internet, and an emoji depends on the system's fonts.
    """
    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    lungs = ((x - 0.42) / 0.3) ** 2 + (y / 0.7) ** 2 <= 1
    lungs |= ((x + 0.42) / 0.3) ** 2 + (y / 0.7) ** 2 <= 1
    out = np.full((64, 64, 3), (30, 40, 60), np.uint8)
    out[lungs] = (190, 215, 235)
    return Image.fromarray(out)


def setup(title: str) -> None:
    """Wide layout (image grids need the room), one title per page, and torch set up before any page uses it."""
    st.set_page_config(page_title=f"{title} · eXBL Studio", page_icon=icon(), layout="wide")
    st.title(title)
    cache.device()


def trained_run() -> runs.Run:
    """The current run with an unrefined model, or an empty state linking to Data and model (the page stops)."""
    run = state.current_run() or example.offer()
    if run is None:
        views.empty_state("No run yet: choose the data on Data and model.", DATA, "Data and model")
        st.stop()
    example.notes()
    if not run.has(runs.UNREFINED):
        views.empty_state("No model yet: train one on Data and model.", DATA, "Data and model")
        st.stop()
    cache.prefetch(run)
    return run
