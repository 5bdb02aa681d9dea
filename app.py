"""eXBL Studio's entrypoint (``streamlit run app.py``): it names the pages and runs the one chosen.

``st.navigation`` rather than the ``pages/`` folder's automatic menu, so that the menu
says "Home" instead of the entry file's name, and each page has a stable, readable URL.
The pages live in ``app_pages/``, not ``pages/``: Streamlit serves a process's first
session in its old folder mode when a ``pages/`` folder sits beside the entry file, and
that menu listed an extra "app" entry above Home.
The pages have no menu icons: Streamlit turns a page's icon into the tab's favicon, and
fetches a Material icon's favicon from a font host on the internet.
"""

from __future__ import annotations

import streamlit as st

from studio import pages

st.navigation(
    [
        st.Page(pages.HOME, title="Home", url_path="home", default=True),
        st.Page(pages.DATA, title="Data and model", url_path="Data_and_model"),
        st.Page(pages.EXPLORE, title="Explore", url_path="Explore"),
        st.Page(pages.REFINE, title="Refine", url_path="Refine"),
        st.Page(pages.COMPARE, title="Compare", url_path="Compare"),
    ]
).run()
