"""Refinement methods behind one interface, chosen by name everywhere.

A method is a loss term added to cross-entropy, or a change to the training batch,
plus the feedback it needs: ``two-clicks`` (the good and the bad exemplar, their
CAMs and their own lung masks) or ``masks`` (a lung mask for every training image).
Each method is one module of this package with one registry entry; the training
loop, the CLI, the app and the study never ask which method they hold.

A method's ``build_objective`` runs once before refinement, with the unrefined model, and
returns an ``Objective``: the per-batch work. The loop calls ``objective.batch`` on
the (augmented) batch before the forward pass, then ``objective.term`` on the
forward pass's state. The term is unweighted; the loop multiplies it by
``lambda_expl``.
"""

from __future__ import annotations

from exbl_core.data import Split
from exbl_core.method_names import NAMES
from exbl_core.methods import counterexamples, exbl, gradcam_mask, region_swap, rrr
from exbl_core.methods.base import Batch, Feedback, Method, Objective, Pair

__all__ = ["METHODS", "Batch", "Feedback", "Method", "Objective", "Pair", "check_feedback", "get_method"]

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        exbl.EXBL,
        exbl.EXBL_CAM,
        rrr.METHOD,
        gradcam_mask.METHOD,
        counterexamples.METHOD,
        counterexamples.METHOD_CAM,
        region_swap.METHOD,
        region_swap.METHOD_FROM_MAP,
    )
}
"""Every method, in the order the CLI, the app and the study list them: the paper's first."""
if tuple(METHODS) != NAMES:  # the run folder recognises refined-<method>.pt by these names
    raise ImportError(f"exbl_core.method_names.NAMES {NAMES} does not list the registry's methods {tuple(METHODS)}")


def get_method(name: str) -> Method:
    """The method called ``name``; a one-line error naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def check_feedback(method: Method, train: Split) -> None:
    """Refuse a method that needs lung masks on data without them."""
    if method.needs_masks and (train.masks is None or not bool(train.masks.flatten(1).any(1).all())):
        raise ValueError(f"method {method.name!r} needs a lung mask for every training image, and this data set lacks some")
