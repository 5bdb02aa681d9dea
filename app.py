"""eXBL Studio's entrypoint (``streamlit run app.py``): it names the pages and runs the one chosen.

``st.navigation`` rather than the ``pages/`` folder's automatic menu, so that the menu
says "Home" instead of the entry file's name, and each page has a stable, readable URL.
"""

from __future__ import annotations

import streamlit as st

from studio import pages

st.navigation(
    [
        st.Page(pages.HOME, title="Home", icon=":material/home:", url_path="home", default=True),
        st.Page(pages.DATA, title="Data and model", icon=":material/dataset:", url_path="Data_and_model"),
        st.Page(pages.EXPLORE, title="Explore", icon=":material/grid_view:", url_path="Explore"),
        st.Page(pages.REFINE, title="Refine", icon=":material/tune:", url_path="Refine"),
        st.Page(pages.COMPARE, title="Compare", icon=":material/compare:", url_path="Compare"),
    ]
).run()
