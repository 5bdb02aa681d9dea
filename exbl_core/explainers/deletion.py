"""Deletion: does a map point at what the model uses?

Replace the map's top ``tau``% pixels with the infill and measure how much the target's
probability drops. A map that found the evidence the model decides from gives a large
drop; a map that looks nice but points elsewhere gives a small one. It scores every
explainer alike, so GradCAM and occlusion can be compared on the same images.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from exbl_core.explainers.occlusion import Infill, infill_values, target_probs
from exbl_core.model import fold_batchnorm


def top_pixels(maps: torch.Tensor, tau: float = 5.0) -> torch.Tensor:
    """Bool [N,H,W]: each map's ``ceil(tau% of H*W)`` largest pixels (AP's top-k)."""
    flat = maps.flatten(1)
    k = math.ceil(tau / 100 * flat.shape[1])
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen.scatter_(1, flat.topk(k, dim=1).indices, True)
    return chosen.view_as(maps)


@torch.no_grad()
def deletion_scores(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    infill: Infill = "mean",
    tau: float = 5.0,
    before: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per image [N]: the target's probability minus its probability with the map's top ``tau``% pixels hidden.

    ``before``, the target's probability on the unchanged images [N], is computed here unless given.
    """
    device = next(model.parameters()).device
    folded = fold_batchnorm(model)
    x, t = images.to(device), targets.to(device).long()
    hidden = top_pixels(maps.to(device), tau)[:, None].to(x.dtype)
    deleted = x * (1 - hidden) + infill_values(x, infill) * hidden
    base = target_probs(folded, x, t) if before is None else before.to(device)
    return (base - target_probs(folded, deleted, t)).cpu()
