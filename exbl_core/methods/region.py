"""The "do not rely on this" region that two clicks define, read from the bad exemplar's occlusion map.

Radiographs are roughly aligned, so where the model decides from in the bad exemplar is
a place in the image, shared by all images. ``counterexamples`` and ``region-swap`` read
it here when the data set has no lung masks (and ``region-swap-occlusion`` always does).

The map is occlusion, not GradCAM: at the paper's layer GradCAM puts every phantom's
Viral Pneumonia evidence in one central blob and never on the shoulders that the model
uses, while occlusion's top region sits on them (docs/design.md, section 12). Only the
bad exemplar's map is read: a faithful map of a good exemplar of the same class can sit
on the same shortcut, so "where the bad looks and the good does not" could be empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exbl_core import explainers
from exbl_core.data import Split
from exbl_core.methods.base import Pick
from exbl_core.model import evaluating

THRESHOLD = 0.5  # a map "points" where it reaches half its peak


def bad_map(model: nn.Module, train: Split, pick: Pick) -> torch.Tensor:
    """The bad exemplar's faithful map [H,W] in [0, 1] for its true class under ``model``."""
    idx = torch.tensor([pick.bad])
    with evaluating(model):
        maps = explainers.get(explainers.FAITHFUL).maps(model, train.float_images(idx), train.labels[idx])
    return explainers.for_display(maps)[0]


def avoid_region(model: nn.Module, train: Split, pick: Pick, grow: int = 3, use_masks: bool = True, mirror: bool = True) -> torch.Tensor:
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
