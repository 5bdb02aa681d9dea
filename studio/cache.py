"""Cached data, models and per-model predictions, so a page rerun costs milliseconds.

Keys are the run folder and the modification time of the file the value comes from:
a retrained checkpoint or a new config has a new mtime, so stale entries are never
served. ``st.cache_resource`` rather than ``st.cache_data`` is used because these
values are large (200 CAMs at 128x128 are 13 MB) and read-only: ``cache_data`` would
copy them on every rerun. Occlusion maps, at a fraction of a second each, are made only
for the images a page shows and kept per image (``MapStore``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from exbl_core import explainers, faithfulness, picking, results, run_data, run_models, runs
from exbl_core.data import Split
from exbl_core.figures import figure3, figure_png
from exbl_core.training import choose_device
from studio import threads
from studio.jobs import get_runner

RUNS_DIR_ENV = "EXBL_RUNS_DIR"


def runs_dir() -> Path:
    """Where run folders live: $EXBL_RUNS_DIR (tests use a temporary folder) or ./runs."""
    return Path(os.environ.get(RUNS_DIR_ENV, "runs"))


@st.cache_resource
def device() -> torch.device:
    """Chosen once per process (cuda, then mps, then cpu), with the pages' torch CPU threads set first
    (``studio.threads``: the background job sets its own)."""
    threads.use(threads.for_pages())
    return choose_device()


def _mtime(run: runs.Run, name: str) -> float:
    return run.file(name).stat().st_mtime if run.has(name) else 0.0


def _data_key(run: runs.Run) -> str:
    """The run's data settings: refinement settings saved into config.json must not reload data."""
    return json.dumps(run.config()["data"], sort_keys=True)


@st.cache_resource(max_entries=8, show_spinner="Loading images…")
def _split(run_path: str, split: str, data_key: str) -> Split:
    return run_data.load_split(runs.Run(Path(run_path)), split)


def split(run: runs.Run, name: str) -> Split:
    """One split of the run's data (synthetic splits are regenerated once, then cached)."""
    return _split(str(run.path), name, _data_key(run))


def data(run: runs.Run) -> dict[str, Split]:
    """Every split the run has, as the pipeline's steps expect them."""
    return {name: split(run, name) for name in run_data.split_names(run)}


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _model(run_path: str, which: str, mtime: float) -> torch.nn.Module:
    return run_models.load_model(runs.Run(Path(run_path)), which, device())


def checkpoint_name(which: str) -> str:
    return run_models.model_file(which)


def model(run: runs.Run, which: str) -> torch.nn.Module:
    return _model(str(run.path), which, _mtime(run, checkpoint_name(which)))


@st.cache_resource(max_entries=12, show_spinner="Computing predictions and GradCAM…")
def _scores(run_path: str, which: str, split_name: str, mtime: float, data_key: str, tau: float) -> dict[str, np.ndarray]:
    s = _split(run_path, split_name, data_key)
    out = picking.training_scores(_model(run_path, which, mtime), s, tau)
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def scores(run: runs.Run, which: str, split_name: str) -> dict[str, np.ndarray]:
    """probs, preds, cams and ap of one model on one split, computed in one batched pass and cached."""
    tau = run_data.train_config(run, "refine").tau
    return _scores(str(run.path), which, split_name, _mtime(run, checkpoint_name(which)), _data_key(run), tau)


def image_size(run: runs.Run) -> int:
    """The run's image side in pixels, from its config: no split needs loading to know it."""
    return int(run_data.data_config(run).size)


def explainer_problem(run: runs.Run, name: str) -> str | None:
    """Why ``name`` cannot explain this run's images (occlusion's window is larger than a tiny image), or None."""
    try:
        explainers.get(name).check(image_size(run))
    except ValueError as exc:
        return str(exc)
    return None


def usable_explainers(run: runs.Run) -> tuple[str, ...]:
    """The explainers that can run on this run's images, the paper's first."""
    return explainers.usable(image_size(run))


@st.cache_data(max_entries=16, show_spinner="Drawing Figure 3 with GradCAM and occlusion…")
def _figure3_png(
    run_path: str,
    rows: tuple[int, ...],
    title: str,
    models: tuple[str, ...],
    mtimes: tuple[float, ...],
    data_key: str,
    names: tuple[str, ...],
    split_name: str,
) -> bytes:
    images = _split(run_path, split_name, data_key)
    x = images.float_images(torch.tensor(rows, dtype=torch.long))
    explained = {m: faithfulness.explain(_model(run_path, m, t), x, names) for m, t in zip(models, mtimes, strict=True)}
    labels = results.figure_row_labels(images, list(rows), {m: probs.argmax(1) for m, (probs, _) in explained.items()})
    cam_sets = {(m, name): maps for m, (_, by) in explained.items() for name, maps in by.items()}
    return figure_png(figure3(x, cam_sets, labels, title=title))


def figure3_png(run: runs.Run, rows: list[int], title: str, split_name: str = "test") -> bytes:
    """The paper's Figure 3 for the chosen images as PNG bytes (cached): each model's GradCAM and occlusion side by side.

    Unrefined and every refined model, as the CLI's figure step draws it, on the test
    images or (``split_name``) the shortcut test's, where the shortcut shows. ``title`` says
    how the rows were chosen; it is drawn into the image, so a downloaded figure still
    says what it shows.
    """
    models = ("unrefined", *run_models.refined(run))
    mtimes = tuple(_mtime(run, run_models.model_file(m)) for m in models)
    return _figure3_png(str(run.path), tuple(rows), title, models, mtimes, _data_key(run), usable_explainers(run), split_name)


@st.cache_data(max_entries=32, show_spinner=False)
def _refined_pair(run_path: str, name: str, mtime: float) -> dict | None:
    return picking.refined_pair(runs.Run(Path(run_path)), name)


def refined_pair(run: runs.Run, name: str) -> dict | None:
    """The pair ``name``'s checkpoint was refined from (None when it did not record one), read once per checkpoint."""
    return _refined_pair(str(run.path), name, _mtime(run, checkpoint_name(name)))


class MapStore:
    """One model's display maps from one explainer on one split, by image index, each computed once.

    Occlusion costs a fraction of a second per image at 128 px on 2 cores, so maps are made
    only for the images a page shows, and kept. A page asks with ``get``; ``prefetch``
    fills the next page from a background thread one image at a time, and gives way as
    soon as a page asks (it stops after its current image), so a page never waits for
    more than one image of work it did not ask for. A newer ``prefetch`` replaces an older one.
    """

    def __init__(self, compute: Callable[[list[int]], np.ndarray]) -> None:
        self._compute = compute
        self._maps: dict[int, np.ndarray] = {}
        self._work = threading.Lock()  # held while computing: one computation at a time
        self._asking = 0  # pages waiting for maps: the background thread stops for them
        self._count = threading.Lock()
        self._generation = 0  # the latest prefetch: older threads stop

    def has(self, index: int) -> bool:
        return index in self._maps

    def get(self, indices: list[int]) -> np.ndarray:
        """Maps [len(indices),H,W]: those not computed yet in one batch, then all from the store."""
        with self._count:
            self._asking += 1
        try:
            with self._work:
                missing = [i for i in dict.fromkeys(indices) if i not in self._maps]
                if missing:
                    self._maps.update(zip(missing, self._compute(missing), strict=True))
        finally:
            with self._count:
                self._asking -= 1
        return np.stack([self._maps[i] for i in indices])

    def prefetch(self, indices: list[int]) -> threading.Thread | None:
        """Compute the maps of ``indices`` in a background thread; None when all are there already."""
        todo = [i for i in indices if i not in self._maps]
        if not todo:
            return None
        self._generation += 1
        thread = threading.Thread(target=self._fill, args=(todo, self._generation), name="exbl-prefetch-maps", daemon=True)
        thread.start()
        return thread

    def _fill(self, todo: list[int], generation: int) -> None:
        for i in todo:
            if self._asking or generation != self._generation:
                return
            try:
                with self._work:
                    if i not in self._maps:
                        self._maps[i] = self._compute([i])[0]
            except Exception:  # noqa: BLE001 - a page that needs this map computes it again and shows the error
                return


def _explain(model: torch.nn.Module, s: Split, name: str, indices: list[int]) -> np.ndarray:
    """Display maps in [0, 1] of the model's predicted class for ``s[indices]``."""
    return faithfulness.explain(model, s.float_images(torch.tensor(indices, dtype=torch.long)), (name,))[1][name].numpy()


@st.cache_resource(max_entries=8, show_spinner=False)
def _map_store(run_path: str, which: str, split_name: str, name: str, mtime: float, data_key: str) -> MapStore:
    model, s = _model(run_path, which, mtime), _split(run_path, split_name, data_key)
    return MapStore(lambda indices: _explain(model, s, name, indices))


def _store(run: runs.Run, which: str, split_name: str, name: str) -> MapStore:
    return _map_store(str(run.path), which, split_name, name, _mtime(run, checkpoint_name(which)), _data_key(run))


def maps(run: runs.Run, which: str, split_name: str, name: str, indices: list[int]) -> np.ndarray:
    """Display maps [len(indices),H,W] in [0, 1] of ``which``'s predicted class, from explainer ``name``.

    GradCAM comes from the split's cached scores (one batched pass, already there for AP
    and sorting); any other explainer is computed for these images only, and kept per
    run, model (checkpoint mtime), split, explainer and image.
    """
    if name == "gradcam":
        return scores(run, which, split_name)["cams"][indices]
    return _store(run, which, split_name, name).get(list(indices))


def prefetch_maps(run: runs.Run, which: str, split_name: str, name: str, indices: list[int]) -> None:
    """Start computing ``indices``' maps in the background (the next page), so that paging feels instant.

    Nothing starts for GradCAM (it is there for the whole split) or while a job runs:
    training needs the cores more than a page the user may never open.
    """
    job = get_runner().job
    if name != "gradcam" and indices and (job is None or not job.running):
        _store(run, which, split_name, name).prefetch(list(indices))


@st.cache_resource(max_entries=4, show_spinner="Explaining a sample of correctly classified training images with occlusion…")
def _suggestion(run_path: str, mtime: float, data_key: str) -> tuple[int, int, dict]:
    return faithfulness.faithful_pick(_model(run_path, "unrefined", mtime), _split(run_path, "train", data_key))


def suggestion(run: runs.Run) -> tuple[int, int, dict]:
    """``faithfulness.faithful_pick`` on the unrefined model and the training split, cached: several seconds at 128 px.

    Raises ValueError (one line) when no pair can be suggested.
    """
    return _suggestion(str(run.path), _mtime(run, runs.UNREFINED), _data_key(run))


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
