"""Cached data, models and per-model predictions, so a page rerun costs milliseconds.

Keys are the run folder and the modification time of the file the value comes from:
a retrained checkpoint or a new config has a new mtime, so stale entries are never
served. ``st.cache_resource`` rather than ``st.cache_data`` is used because these
values are large (200 CAMs at 128x128 are 13 MB) and read-only: ``cache_data`` would
copy them on every rerun.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from exbl_core import pipeline, runs
from exbl_core.data import CLASSES, Split
from exbl_core.figures import figure3, figure_png, model_label
from exbl_core.training import choose_device
from studio.jobs import get_runner

RUNS_DIR_ENV = "EXBL_RUNS_DIR"
THREADS_ENV = "EXBL_THREADS"


def runs_dir() -> Path:
    """Where run folders live: $EXBL_RUNS_DIR (tests use a temporary folder) or ./runs."""
    return Path(os.environ.get(RUNS_DIR_ENV, "runs"))


@st.cache_resource
def device() -> torch.device:
    """Chosen once per process (cuda, then mps, then cpu), with torch's CPU threads set first.

    The worker trains while the page thread computes GradCAM, and each would start one
    torch thread per core. On 2 shared cores that oversubscription made a training batch
    take anywhere from 0.3 to 10 s, so Cancel could not answer in time; with half the
    cores each (1 on 2 cores) a batch took a steady 0.6 s. $EXBL_THREADS overrides it.
    """
    torch.set_num_threads(int(os.environ.get(THREADS_ENV, max(1, (os.cpu_count() or 2) // 2))))
    return choose_device()


def _mtime(run: runs.Run, name: str) -> float:
    return run.file(name).stat().st_mtime if run.has(name) else 0.0


def _data_key(run: runs.Run) -> str:
    """The run's data settings: refinement settings saved into config.json must not reload data."""
    return json.dumps(run.config()["data"], sort_keys=True)


@st.cache_resource(max_entries=8, show_spinner="Loading images…")
def _split(run_path: str, split: str, data_key: str) -> Split:
    return pipeline.load_split(runs.Run(Path(run_path)), split)


def split(run: runs.Run, name: str) -> Split:
    """One split of the run's data (synthetic splits are regenerated once, then cached)."""
    return _split(str(run.path), name, _data_key(run))


def data(run: runs.Run) -> dict[str, Split]:
    """Every split the run has, as the pipeline's steps expect them."""
    return {name: split(run, name) for name in pipeline.split_names(run)}


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _model(run_path: str, which: str, mtime: float) -> torch.nn.Module:
    return pipeline.load_model(runs.Run(Path(run_path)), which, device())


def checkpoint_name(which: str) -> str:
    return pipeline.model_file(which)


def model(run: runs.Run, which: str) -> torch.nn.Module:
    return _model(str(run.path), which, _mtime(run, checkpoint_name(which)))


@st.cache_resource(max_entries=12, show_spinner="Computing predictions and GradCAM…")
def _scores(run_path: str, which: str, split_name: str, mtime: float, data_key: str, tau: float) -> dict[str, np.ndarray]:
    s = _split(run_path, split_name, data_key)
    out = pipeline.training_scores(_model(run_path, which, mtime), s, tau)
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def scores(run: runs.Run, which: str, split_name: str) -> dict[str, np.ndarray]:
    """probs, preds, cams and ap of one model on one split, computed in one batched pass and cached."""
    tau = pipeline.train_config(run, "refine").tau
    return _scores(str(run.path), which, split_name, _mtime(run, checkpoint_name(which)), _data_key(run), tau)


@st.cache_data(max_entries=16, show_spinner="Drawing Figure 3…")
def _figure3_png(
    run_path: str, rows: tuple[int, ...], title: str, models: tuple[str, ...], mtimes: tuple[float, ...], data_key: str, tau: float
) -> bytes:
    test = _split(run_path, "test", data_key)
    scores = {m: _scores(run_path, m, "test", t, data_key, tau) for m, t in zip(models, mtimes, strict=True)}
    idx = list(rows)
    labels = [
        f"#{i} true {CLASSES[int(test.labels[i])]}\n"
        + "\n".join(f"{model_label(m)}: {CLASSES[int(s['preds'][i])]}" for m, s in scores.items())
        for i in idx
    ]
    cam_sets = {m: torch.from_numpy(s["cams"][idx]) for m, s in scores.items()}
    return figure_png(figure3(test.float_images(torch.tensor(idx)), cam_sets, labels, title=title))


def figure3_png(run: runs.Run, rows: list[int], title: str) -> bytes:
    """The paper's Figure 3 for the chosen test images, unrefined and every refined model, as PNG bytes (cached).

    ``title`` says how the rows were chosen; it is drawn into the image, so a downloaded
    figure still says what it shows.
    """
    models = ("unrefined", *run.refined())
    mtimes = tuple(_mtime(run, pipeline.model_file(m)) for m in models)
    return _figure3_png(str(run.path), tuple(rows), title, models, mtimes, _data_key(run), pipeline.train_config(run, "refine").tau)


def warm(run: runs.Run, which: str, splits: tuple[str, ...]) -> None:
    """Fill the caches from the background worker, so the next page opens without waiting for GradCAM."""
    for name in splits:
        scores(run, which, name)


def _warm_quietly(run: runs.Run, which: str, splits: tuple[str, ...]) -> None:
    try:
        warm(run, which, splits)
    except Exception:  # noqa: BLE001 - the page that needs these scores computes them again and shows the error
        return


@st.cache_resource(max_entries=8, show_spinner=False)
def _prefetch(run_path: str, which: str, mtime: float, data_key: str) -> threading.Thread:
    thread = threading.Thread(
        target=_warm_quietly, args=(runs.Run(Path(run_path)), which, ("train", "test")), name="exbl-prefetch", daemon=True
    )
    thread.start()
    return thread


def prefetch(run: runs.Run) -> None:
    """Start computing Explore's predictions and GradCAM for ``run`` in the background, once per model.

    A run trained by the CLI, or by an earlier server, reaches the app with empty caches,
    and its first Explore visit would wait for the data, the model and GradCAM (about
    2 s on 2 cores). Started when the home page or a page shows the run, that work is
    usually done by the time the user opens Explore; if not, Explore waits on the same
    cache entry instead of computing it twice. Errors are left to the page that needs
    the scores, which shows them. Nothing starts while a job runs: training needs the
    cores, and the job warms the caches itself when it ends.
    """
    job = get_runner().job
    if run.has(runs.UNREFINED) and (job is None or not job.running):
        _prefetch(str(run.path), "unrefined", _mtime(run, runs.UNREFINED), _data_key(run))
