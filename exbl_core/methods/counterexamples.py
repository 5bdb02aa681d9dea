"""``counterexamples``: break the correlation with the bad exemplar's own pixels (two clicks).

The bad explanation says the model decides from something outside the lungs. Every
training image of another class gets, with probability one half, the bad exemplar's
pixels outside the two exemplars' lungs pasted in, and keeps its label. The
shortcut then appears in every class and predicts nothing, so cross-entropy alone
must find the disease. This is the counterexample strategy of explanatory
interactive learning (Teso and Kersting, AIES 2019), with the region read from the
two clicks instead of annotated per image. It adds no loss term and costs a paste.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exbl_core.data import Split
from exbl_core.methods.base import Batch, Method, Objective, Pick
from exbl_core.methods.region import avoid_region

RATE = 0.5  # share of the other classes' images that get the pasted region


def paste_objective(patch: torch.Tensor, alpha: torch.Tensor, source_label: int, rate: float = RATE) -> Objective:
    """An objective whose only work is the paste: ``patch`` [1,H,W] blended in with ``alpha`` [H,W]."""

    def batch(b: Batch, generator: torch.Generator) -> Batch:
        chosen = (torch.rand(len(b.y), generator=generator) < rate).to(b.y.device) & (b.y != source_label)
        a = alpha.to(b.x.device) * chosen.view(-1, 1, 1, 1)
        return Batch(b.x * (1 - a) + patch.to(b.x.device) * a, b.y, b.masks)

    return Objective(batch=batch)


def paste_region(model: nn.Module, train: Split, pick: Pick) -> torch.Tensor:
    """Bool [H,W]: the bad exemplar's pixels that become the counterexample.

    With lung masks: everything outside both exemplars' own lungs. A bad explanation
    says that the model decides from outside the lungs, and a coarse CAM cannot say
    exactly where; the lungs of either image stay, so no disease is pasted. Without
    masks: ``avoid_region``, where the bad CAM looks and the good one does not.
    """
    masks = train.masks
    if masks is None or not bool(masks[pick.bad].any() and masks[pick.good].any()):
        return avoid_region(model, train, pick)
    return ~(masks[pick.bad] | masks[pick.good])


def prepare(model: nn.Module, train: Split, pick: Pick, cfg) -> Objective:
    region = paste_region(model, train, pick)
    # Soft edges: a hard seam would be a new feature of its own.
    alpha = F.avg_pool2d(region[None, None].float(), 5, stride=1, padding=2)[0, 0]
    return paste_objective(train.float_images(torch.tensor([pick.bad]))[0], alpha, int(train.labels[pick.bad]))


METHOD = Method(
    name="counterexamples",
    feedback="two-clicks",
    summary="pastes the bad exemplar's pixels, where its explanation looks and the good one's does not, into images of other classes",
    source="this project; the counterexample strategy of Teso and Kersting, Explanatory Interactive Machine Learning (AIES 2019)",
    prepare=prepare,
    term_name=None,
)
