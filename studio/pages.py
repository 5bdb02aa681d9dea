"""Page paths for st.page_link and the shared page setup, in one place."""

from __future__ import annotations

import streamlit as st

from studio import cache

HOME = "app.py"
DATA = "pages/1_Data_and_model.py"
EXPLORE = "pages/2_Explore.py"
REFINE = "pages/3_Refine.py"
COMPARE = "pages/4_Compare.py"


def setup(title: str) -> None:
    """Wide layout (image grids need the room), one title per page, and torch set up before any page uses it."""
    st.set_page_config(page_title=f"{title} · eXBL Studio", page_icon=":material/radiology:", layout="wide")
    st.title(title)
    cache.device()
