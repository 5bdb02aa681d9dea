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
from exbl_core.explainers.gradcam import HeadPass
from exbl_core.methods.base import Batch, Method, Objective, Pair, TermSettings
from exbl_core.model import evaluating


def summed_log_prob_gradient(logits: torch.Tensor, x: torch.Tensor, create_graph: bool, retain_graph: bool | None = None) -> torch.Tensor:
    """``d(sum_k log p_k)/dx`` [B,H,W] for gray images ``x`` [B,1,H,W]: what Ross et al. penalise."""
    (grad,) = torch.autograd.grad(F.log_softmax(logits, 1).sum(), x, create_graph=create_graph, retain_graph=retain_graph)
    return grad[:, 0]


def input_gradient_penalty(logits: torch.Tensor, x: torch.Tensor, allowed: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Mean over the batch of ``sum((not allowed) * d(sum_k log p_k)/dx)^2`` (Ross et al., eq. 1)."""
    return (summed_log_prob_gradient(logits, x, create_graph) * ~allowed).pow(2).sum((1, 2)).mean()


SAMPLES = 8  # training images per batch whose input gradients are penalised


def rrr_objective() -> Objective:
    """The penalty, scaled once so that at the first training batch it equals the cross-entropy.

    Input-gradient magnitudes depend on the image size and the model, and eq. 3's
    weight then means nothing portable: a weight that suits one setting destroys the
    classifier in another (lambda 1 at lr 1e-3 did, on our phantom). Fixing the scale
    at the first batch makes ``lambda_expl`` the ratio of the two terms at the start;
    afterwards the scale stays fixed, so the penalty can fall.
    """
    scale: list[float] = []

    def term(model: nn.Module, batch: Batch, state: HeadPass, training: bool) -> dict[str, torch.Tensor]:
        # The double backward through depthwise convolutions is what RRR costs; on a
        # shuffled batch, a few images estimate the same mean penalty (validation takes
        # every image, with no second backward). The gradients are the eval-mode network's:
        # each image's own, as at inference, rather than mixed through these few images'
        # batch statistics (whose double backward also cost a quarter of the step).
        n = SAMPLES if training else len(batch.x)
        x = batch.x[:n].detach().requires_grad_(True)
        with evaluating(model), torch.enable_grad():
            penalty = input_gradient_penalty(model(x), x, batch.masks[:n], create_graph=training)
        if not training:
            penalty = penalty.detach()
        elif not scale:
            ce = F.cross_entropy(state.logits.detach(), batch.y)
            scale.append(float(ce) / max(float(penalty.detach()), 1e-12))
        return {"expl": penalty * (scale[0] if scale else 1.0)}

    return Objective(term=term, masks=True)


def build_objective(model: nn.Module, train: Split, pick: Pair, cfg: TermSettings) -> Objective:
    return rrr_objective()


METHOD = Method(
    name="rrr-lungs",
    feedback="masks",
    summary="input gradients penalised outside each training image's lung mask (needs every lung mask)",
    source="Ross, Hughes and Doshi-Velez, Right for the Right Reasons (IJCAI 2017); the paper's eq. 3",
    build_objective=build_objective,
)
