"""Page paths for st.page_link and the shared page setup, in one place."""

from __future__ import annotations

import streamlit as st

from exbl_core import runs
from studio import cache, state, views

HOME = "pages/0_Home.py"
DATA = "pages/1_Data_and_model.py"
EXPLORE = "pages/2_Explore.py"
REFINE = "pages/3_Refine.py"
COMPARE = "pages/4_Compare.py"


def setup(title: str) -> None:
    """Wide layout (image grids need the room), one title per page, and torch set up before any page uses it."""
    st.set_page_config(page_title=f"{title} · eXBL Studio", page_icon=":material/radiology:", layout="wide")
    st.title(title)
    cache.device()


def trained_run() -> runs.Run:
    """The current run with an unrefined model, or an empty state linking to Data and model (the page stops)."""
    run = state.current_run()
    if run is None:
        views.empty_state("No run yet: choose the data on Data and model.", DATA, "Data and model")
        st.stop()
    if not run.has(runs.UNREFINED):
        views.empty_state("No model yet: train one on Data and model.", DATA, "Data and model")
        st.stop()
    cache.prefetch(run)
    return run
