"""The region that two clicks mark as "do not rely on this", and the helpers every region method shares.

Radiographs are roughly aligned, so where the model decides from in the bad exemplar is
a place in the image, shared by all images. ``counterexamples``, ``counterexamples-cam``,
``region-swap`` and ``region-swap-occlusion`` all read that place here, blend it in with
the same soft edges and keep GradCAM out of it with the same term; ``gradcam-lungs``
shares the term's measure, the CAM's mass outside an allowed region.

Without lung masks the region comes from the bad exemplar's occlusion map, not GradCAM:
at the paper's layer GradCAM puts every phantom's Viral Pneumonia evidence in one central
blob and never on the shoulders that the model uses, while occlusion's top region sits on
them (docs/design.md, section 12). Only the bad exemplar's map is read: a faithful map of a
good exemplar of the same class can sit on the same shortcut, so "where the bad looks and
the good does not" could be empty.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from exbl_core import explainers
from exbl_core.data import Split
from exbl_core.explainers.gradcam import EPS, HeadPass, analytic_cams
from exbl_core.methods.base import Batch, Pair
from exbl_core.model import evaluating

THRESHOLD = 0.5  # a map "points" where it reaches half its peak


def bad_map(model: nn.Module, train: Split, pick: Pair) -> torch.Tensor:
    """The bad exemplar's faithful map [H,W] in [0, 1] for its true class under ``model``."""
    idx = torch.tensor([pick.bad])
    with evaluating(model):
        maps = explainers.get(explainers.FAITHFUL).maps(model, train.float_images(idx), train.labels[idx])
    return explainers.for_display(maps)[0]


def avoid_region(model: nn.Module, train: Split, pick: Pair, grow: int = 3, use_masks: bool = True, mirror: bool = True) -> torch.Tensor:
    """Bool [H,W]: where the bad exemplar's occlusion map reaches half its peak, outside its lungs when ``use_masks``.

    With ``mirror`` the region is joined with its left-right mirror image: a chest is
    bilaterally symmetric, and a model that reads one humerus head reads the other as
    soon as the first is taken away (seed 0 of the demo: the bad exemplar's map covered
    the left head only, and a swap of that region alone recovered 0.11 of the oracle's
    shortcut-test accuracy). The region grows by ``grow`` pixels so that it covers the
    structure, not just the map's peak. ``use_masks=False`` ignores any lung mask, as on
    data without them.
    """
    region = bad_map(model, train, pick) >= THRESHOLD
    if mirror:
        region |= region.flip(-1)
    if use_masks and train.masks is not None:
        region &= ~train.masks[pick.bad]
    if grow:
        region = F.max_pool2d(region[None, None].float(), 2 * grow + 1, stride=1, padding=grow)[0, 0].bool()
    if not bool(region.any()):
        raise ValueError(
            "the bad exemplar's occlusion map points only inside its lungs, so it shows no shortcut to avoid: "
            "pick a bad explanation whose occlusion map lies elsewhere"
        )
    return region


def exemplar_region(model: nn.Module, train: Split, pick: Pair) -> torch.Tensor:
    """Bool [H,W]: the bad exemplar's pixels that the region methods take away from the shortcut.

    With lung masks: everything outside both exemplars' own lungs. A bad explanation
    says that the model decides from outside the lungs, and a coarse CAM cannot say
    exactly where; the lungs of either image stay, so no disease is moved. Without
    masks: ``avoid_region``, where the bad exemplar's occlusion map points.
    """
    masks = train.masks
    if masks is None or not bool(masks[pick.bad].any() and masks[pick.good].any()):
        return avoid_region(model, train, pick)
    return ~(masks[pick.bad] | masks[pick.good])


def soft_edges(region: torch.Tensor) -> torch.Tensor:
    """Float [H,W] blending weights of a bool ``region``: a hard seam would be a new feature of its own."""
    return F.avg_pool2d(region[None, None].float(), 5, stride=1, padding=2)[0, 0]


def outside_share(cams: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Per image [B]: the share of the CAM's mass outside ``allowed`` (0 when the CAM is empty)."""
    total = cams.flatten(1).sum(1)
    return (cams * ~allowed).flatten(1).sum(1) / (total + EPS)


def region_term(region: torch.Tensor) -> Callable[[nn.Module, Batch, HeadPass, bool], dict[str, torch.Tensor]]:
    """The share of each image's true-class GradCAM inside ``region`` [H,W]: "do not look here"."""

    def term(model: nn.Module, batch: Batch, state: HeadPass, training: bool) -> dict[str, torch.Tensor]:
        cams = analytic_cams(model, state, batch.y, batch.x.shape[-2:])
        return {"expl": outside_share(cams, ~region.to(cams.device)).mean()}

    return term
