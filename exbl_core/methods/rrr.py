"""``rrr-lungs``: Right for the Right Reasons with each image's lung mask (the paper's eq. 3).

Ross, Hughes and Doshi-Velez (IJCAI 2017): penalise the input gradient of the summed
log-probabilities outside the region where the model may look. Here that region is
each training image's lung mask, so the method needs a full annotation of every
image: it is the reference that shows what complete feedback can do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exbl_core.data import Split
from exbl_core.gradcam import HeadPass
from exbl_core.methods.base import Batch, Method, Objective, Pick


def input_gradient_penalty(logits: torch.Tensor, x: torch.Tensor, allowed: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Mean over the batch of ``sum((not allowed) * d(sum_k log p_k)/dx)^2`` (Ross et al., eq. 1)."""
    (grad,) = torch.autograd.grad(F.log_softmax(logits, 1).sum(), x, create_graph=create_graph)
    return (grad[:, 0] * ~allowed).pow(2).sum((1, 2)).mean()


def rrr_term(model: nn.Module, batch: Batch, state: HeadPass, training: bool) -> dict[str, torch.Tensor]:
    """During training the loop's forward pass already tracks the input; validation runs its own."""
    if training:
        return {"term": input_gradient_penalty(state.logits, batch.x, batch.masks, create_graph=True)}
    with torch.enable_grad():
        x = batch.x.detach().requires_grad_(True)
        return {"term": input_gradient_penalty(model(x), x, batch.masks, create_graph=False).detach()}


def prepare(model: nn.Module, train: Split, pick: Pick, cfg) -> Objective:
    return Objective(term=rrr_term, input_grad=True, masks=True)


METHOD = Method(
    name="rrr-lungs",
    feedback="masks",
    summary="input gradients penalised outside each training image's lung mask (needs every lung mask)",
    source="Ross, Hughes and Doshi-Velez, Right for the Right Reasons (IJCAI 2017); the paper's eq. 3",
    prepare=prepare,
    default_lambda=10.0,
)
