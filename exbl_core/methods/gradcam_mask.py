"""``gradcam-lungs``: penalise the share of GradCAM outside each image's lung mask.

Like RRR, but on the explanation the user sees (Schramowski et al., Nature Machine
Intelligence 2020, "right for the right scientific reasons", RRR-G). Our analytic
GradCAM is an ordinary differentiable function of the weights, so the term costs
about as much as the forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from exbl_core.data import Split
from exbl_core.explainers.gradcam import HeadPass, analytic_cams
from exbl_core.methods.base import Batch, Method, Objective, Pair, TermSettings
from exbl_core.methods.region import outside_share


def gradcam_term(model: nn.Module, batch: Batch, state: HeadPass, training: bool) -> dict[str, torch.Tensor]:
    cams = analytic_cams(model, state, batch.y, batch.x.shape[-2:])
    share = outside_share(cams, batch.masks)
    return {"expl": share.mean()}


def build_objective(model: nn.Module, train: Split, pick: Pair, cfg: TermSettings) -> Objective:
    return Objective(term=gradcam_term, masks=True)


METHOD = Method(
    name="gradcam-lungs",
    feedback="masks",
    summary="the share of each true-class GradCAM outside the image's lung mask is penalised (needs every lung mask)",
    source="Schramowski et al., Making deep neural networks right for the right scientific reasons (2020), RRR-G",
    build_objective=build_objective,
)
