"""The types every refinement method shares: a batch, the pair (the two clicks), an objective, a registry entry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

from exbl_core.data import Split
from exbl_core.events import Terms
from exbl_core.explainers.gradcam import HeadPass

Feedback = Literal["two-clicks", "masks"]


class TermSettings(Protocol):
    """The refinement settings a method's ``build_objective`` may read.

    A protocol rather than ``config.RefineConfig`` itself: the settings module imports the
    method registry (to check a method's name and read its default weight), so the methods
    naming the settings type would close an import cycle.
    """

    explanation: str
    distance: str
    margin: float


@dataclass
class Batch:
    """One training or validation batch: images [B,1,H,W] in [0, 1], labels, lung masks [B,H,W]."""

    x: torch.Tensor
    y: torch.Tensor
    masks: torch.Tensor | None = None


@dataclass(frozen=True)
class Pair:
    """The pair, the two clicks: training-image indices of the good and the bad explanation."""

    good: int
    bad: int


@dataclass
class Objective:
    """What a method does to each batch.

    ``term(model, batch, state, training)`` returns the unweighted term [] as ``expl`` and,
    where it means something, ``active_triplets`` (the share the term still pushes): the
    names the epoch's event and the page keep (``exbl_core.events.Terms``);
    ``None`` means the method adds no term (it works through ``batch`` alone).
    ``batch(batch, generator)`` may rewrite a training batch (augmentation methods).
    ``masks`` asks the loop for every batch's lung masks (moved along with augmented images).
    """

    term: Callable[[nn.Module, Batch, HeadPass, bool], Terms] | None = None
    batch: Callable[[Batch, torch.Generator], Batch] | None = None
    masks: bool = False


@dataclass(frozen=True)
class Method:
    """A registry entry: the name users type, what it needs, and how to build its objective."""

    name: str
    feedback: Feedback
    summary: str  # one line for the CLI help and the Refine page
    source: str  # where the idea comes from
    build_objective: Callable[[nn.Module, Split, Pair, TermSettings], Objective]
    default_lambda: float = 1.0  # the term's weight when the user gives none
    term_name: str | None = "explanation"  # the chart's name for the term; None: no term
    # Factors on the run's refinement epochs and lr for a method that needs a longer schedule;
    # factors rather than values, so the quick demo stays quick and the paper's schedule scales.
    schedule: Mapping[str, float] = field(default_factory=dict)

    @property
    def needs_masks(self) -> bool:
        return self.feedback == "masks"
