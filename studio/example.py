"""The shipped example in the app: something explained to look at before anything was trained.

With no run of one's own, Home and Explore offer the example (``assets/``: the default
demo's unrefined model and oracle, phantom seed 0). On a first start, when the runs
folder does not exist yet (a fresh clone), it is opened at once and one line says so:
a new user sees explained images without knowing what to click. Opening copies it
into the runs folder as an ordinary run; ``assets/`` is only read. When the assets fail
their check (missing, altered, made for other settings), a warning says so and points
to the demo, which then trains from scratch.
"""

from __future__ import annotations

import time

import streamlit as st

from exbl_core import assets, errors, runs
from studio import cache, state

OPEN_LABEL = "Open the shipped example"
OPENED = "example_opened"  # session keys: the line saying what was opened, and why the demo could not use the
UNUSABLE = "example_unusable"  # example; each is shown once, on the page's next run


def no_runs() -> bool:
    """True when the runs folder holds no run this version can open."""
    return not runs.list_runs(cache.runs_dir())


def _first_start() -> bool:
    """True once per runs folder: this call created it. Creating the folder is atomic, so two
    sessions starting together open one example between them, not two."""
    try:
        cache.runs_dir().mkdir(parents=True)
    except FileExistsError:
        return False
    except OSError:
        return False  # a folder that cannot be made: the page's own steps say why when they write
    return True


def open_example() -> runs.Run:
    """Copy the shipped example into a new run of the runs folder and make it the session's run.

    The assets are verified first (hashes, settings, a safe load), so a broken example
    creates no run; an ``AssetError`` says which file and what to run.
    """
    manifest = assets.verify()
    path = cache.runs_dir() / f"example-{time.strftime('%Y%m%d-%H%M%S')}"
    run = assets.new_example_run(path)
    with runs.locked(run.path):
        assets.install(run)
    state.select_run(run)
    st.session_state[OPENED] = (
        f"Opened {assets.describe(manifest)} as the run {run.name}: nothing was trained. "
        "Mark a good and a bad explanation on Explore, or run the demo on Home to refine it."
    )
    return run


def _open_or_warn() -> runs.Run | None:
    try:
        return open_example()
    except (assets.AssetError, errors.RunError) as exc:
        st.warning(f"The shipped example could not be opened ({exc}). Run the demo on Home: it trains the models from scratch.")
        return None


def offer() -> runs.Run | None:
    """With no run of one's own: open the example at once on a first start, else offer it as a button.

    Returns the run opened now (the page goes on with it), or None.
    """
    if _first_start():
        return _open_or_warn()
    with st.container(border=True):
        st.markdown(
            "**Nothing trained yet?** The shipped example holds the demo's trained model and oracle: "
            "its explanations are ready to look at in seconds."
        )
        if st.button(OPEN_LABEL, icon=":material/folder_open:", key="open-example") and _open_or_warn() is not None:
            st.rerun()
    return None


def for_demo() -> bool:
    """May the demo start from the example? When its check fails, a warning kept for the page's next run says
    why, and the demo trains from scratch."""
    try:
        assets.verify()
    except assets.AssetError as exc:
        st.session_state[UNUSABLE] = f"The shipped example cannot be used ({exc}), so the demo trains the models from scratch."
        return False
    return True


def notes() -> None:
    """The lines saying that the example was opened, or that the demo could not use it: once, on the next page drawn."""
    for key, show in ((OPENED, st.success), (UNUSABLE, st.warning)):
        line = st.session_state.pop(key, None)
        if line is not None:
            show(line)
