"""The "do not look here" region that two clicks define.

Radiographs are roughly aligned, so where the bad explanation looks and the good one
does not is a place in the image, shared by all images. ``counterexamples`` reads it
from the two exemplars when the data set has no lung masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exbl_core.data import Split
from exbl_core.gradcam import gradcam
from exbl_core.methods.base import Pick
from exbl_core.model import evaluating

THRESHOLD = 0.5  # a CAM "looks" where it reaches half its maximum


def _exemplar_cams(model: nn.Module, train: Split, pick: Pick) -> torch.Tensor:
    """The true-class CAMs of the good and the bad exemplar under ``model``: [2,H,W]."""
    idx = torch.tensor([pick.good, pick.bad])
    device = next(model.parameters()).device
    with evaluating(model), torch.no_grad():
        cams = gradcam(model, train.float_images(idx).to(device), train.labels[idx].to(device)).cpu()
    return cams


def avoid_region(model: nn.Module, train: Split, pick: Pick, grow: int = 3) -> torch.Tensor:
    """Bool [H,W]: where the bad exemplar's CAM is high and the good one's is not, outside the bad image's lungs.

    Both CAMs explain each image's true class under the unrefined model. The region
    grows by ``grow`` pixels so that it covers the structure, not just the CAM's peak.
    """
    cams = _exemplar_cams(model, train, pick)
    region = (cams[1] >= THRESHOLD) & (cams[0] < THRESHOLD)
    if train.masks is not None:
        region &= ~train.masks[pick.bad]
    if grow:
        region = F.max_pool2d(region[None, None].float(), 2 * grow + 1, stride=1, padding=grow)[0, 0].bool()
    if not bool(region.any()):
        raise ValueError(
            "the bad explanation looks where the good one does (outside the lungs, they share every high-attention pixel): "
            "pick a bad explanation that looks somewhere else"
        )
    return region
