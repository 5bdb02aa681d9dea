"""``region-swap``: the two clicks' region refilled with another patient's pixels (two clicks).

``counterexamples`` pastes the bad exemplar into half of the other classes' images. That
breaks "child bones, so Viral Pneumonia" only half-way: every image of the bad
exemplar's class still shows the bones, so "no child bones, so not Viral Pneumonia"
stays true of the training data and the model can keep using it. Here each training
image instead gets the region (outside both exemplars' lungs, as for counterexamples)
of another image of the same batch, whatever its class, and keeps its own lungs and
label. The region's content is then independent of the label in both directions, and
only the lungs predict the class. It is the background swap of Xiao et al. (Noise or
Signal: The Role of Image Backgrounds in Object Recognition, ICLR 2021), with the
foreground read from the two clicks instead of annotated per image.

The swap alone removes the shortcut's use but leaves the explanations free to look at
the swapped region, so the same region is also a "do not look here" mask for every
image's GradCAM, as in counterexamples-cam (``lambda_expl`` 0 turns that term off).
"""

from __future__ import annotations

import torch
from torch import nn

from exbl_core.data import Split
from exbl_core.methods.base import Batch, Method, Objective, Pair, TermSettings
from exbl_core.methods.region import avoid_region, exemplar_region, region_term, soft_edges

RATE = 1.0  # share of the images whose region is replaced: all, so that none keeps its own


def swap_objective(alpha: torch.Tensor, rate: float = RATE) -> Objective:
    """An objective whose only work is the swap: each chosen image takes another's pixels where ``alpha`` [H,W] is 1."""

    def batch(b: Batch, generator: torch.Generator) -> Batch:
        n = len(b.y)
        donor = torch.randperm(n, generator=generator).to(b.x.device)
        chosen = (torch.rand(n, generator=generator) < rate).to(b.x.device)
        a = alpha.to(b.x.device) * chosen.view(-1, 1, 1, 1)
        return Batch(b.x * (1 - a) + b.x[donor] * a, b.y, b.masks)

    return Objective(batch=batch)


def swap_and_avoid(region: torch.Tensor) -> Objective:
    """The swap of ``region`` [H,W] between images, and the same region as GradCAM's "do not look here"."""
    return Objective(term=region_term(region), batch=swap_objective(soft_edges(region)).batch)


def build_objective(model: nn.Module, train: Split, pick: Pair, cfg: TermSettings) -> Objective:
    return swap_and_avoid(exemplar_region(model, train, pick))


def build_objective_from_map(model: nn.Module, train: Split, pick: Pair, cfg: TermSettings) -> Objective:
    """The region read from the bad exemplar's occlusion map alone, lung masks unused, as on data that has none."""
    return swap_and_avoid(avoid_region(model, train, pick, use_masks=False))


METHOD = Method(
    name="region-swap",
    feedback="two-clicks",
    summary="refills every image's region outside the two exemplars' lungs with another training image's, and keeps GradCAM out of it",
    source="this project; the background swap of Xiao et al., Noise or Signal: The Role of Image Backgrounds in Object Recognition "
    "(ICLR 2021), with the RRR-G style penalty of counterexamples-cam",
    build_objective=build_objective,
    # counterexamples-cam's weight and schedule (changed data needs ordinary training to
    # unlearn), taken as they were, not tuned for this method.
    default_lambda=0.3,
    schedule={"epochs": 8 / 3, "lr": 3.0},
)

METHOD_FROM_MAP = Method(
    name="region-swap-occlusion",
    feedback="two-clicks",
    summary="region-swap with the region read from the bad exemplar's occlusion map, lung masks unused (as on data without them)",
    source="this project: region-swap, with the region where hiding the bad exemplar lowers its class's probability most",
    build_objective=build_objective_from_map,
    default_lambda=METHOD.default_lambda,
    schedule=METHOD.schedule,
)
