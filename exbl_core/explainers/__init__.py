"""Explainers behind one interface, chosen by name: ``get(name, **settings).maps(model, images, targets)``.

Every explainer returns one map per image, ``[N,H,W]`` at the input's size, where a
larger value means "more evidence for the target here". ``gradcam`` is the paper's
explanation (and the differentiable one inside the eXBL loss); ``occlusion`` measures
what the model uses by hiding patches of the image. On the phantom the two can
disagree: GradCAM at the paper's layer hides the shoulder shortcut that occlusion
shows (docs/design.md, section 12), so every map shown to a user can be scored for
faithfulness (``deletion``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from exbl_core.explainers.gradcam import GradCAM
from exbl_core.explainers.occlusion import Occlusion


class Explainer(Protocol):
    """What every explainer offers: a name, a label for people, its settings, and its maps."""

    name: str
    label: str

    @property
    def settings(self) -> dict: ...

    def check(self, size: int) -> None:
        """Raise ValueError (one line naming the setting) when the explainer cannot run on ``size``-px images."""

    def maps(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One map per image [N,H,W] for class ``targets`` [N]; the model is only read."""


EXPLAINERS: dict[str, Callable[..., Explainer]] = {"gradcam": GradCAM, "occlusion": Occlusion}
"""Every explainer, the paper's first."""
NAMES = tuple(EXPLAINERS)
FAITHFUL = "occlusion"  # the explainer that measures what the model uses: suggestions and region reading follow it


def get(name: str, **settings) -> Explainer:
    """The explainer called ``name`` with ``settings``; a one-line ValueError naming the choices or the setting otherwise."""
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explainer {name!r}; choose one of {', '.join(NAMES)}")
    try:
        return EXPLAINERS[name](**settings)
    except TypeError as exc:
        raise ValueError(f"explainer {name!r} does not take these settings ({', '.join(settings)})") from exc


def usable(size: int) -> tuple[str, ...]:
    """The explainers that run on ``size``-px images with their default settings, the paper's first.

    Occlusion's window is larger than the smallest images a run allows, so on those only
    GradCAM explains; evaluation, figures and the app all ask here instead of failing.
    """
    return tuple(name for name in NAMES if _runs_on(name, size))


def _runs_on(name: str, size: int) -> bool:
    try:
        get(name).check(size)
    except ValueError:
        return False
    return True


def for_display(maps: torch.Tensor) -> torch.Tensor:
    """Maps [N,H,W] as pictures in [0, 1]: the positive part over each map's peak (GradCAM's own normalisation)."""
    positive = maps.clamp(min=0)
    return positive / (positive.flatten(1).amax(1).view(-1, 1, 1) + 1e-8)
