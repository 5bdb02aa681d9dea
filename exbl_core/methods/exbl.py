"""eXBL (the paper, section 3) and its non-paper variant ``exbl-cam``.

``E(x) = gray(x) * GradCAM_y(x)``; ``C_good`` and ``C_bad`` are the two clicked images'
explanations under the unrefined model, frozen. Every training image's explanation is
pulled towards ``C_good`` and pushed away from ``C_bad`` by a triplet hinge with margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from exbl_core.data import Split
from exbl_core.explainers.gradcam import HeadPass, analytic_cams, head_pass
from exbl_core.losses import Distance, Explanation, explanation, triplet_terms
from exbl_core.methods.base import Batch, Method, Objective, Pair, TermSettings
from exbl_core.model import evaluating


@dataclass
class Exemplars:
    """The frozen eXBL targets: ``C_good`` and ``C_bad`` as flattened [H*W] tensors."""

    c_good: torch.Tensor
    c_bad: torch.Tensor


def compute_exemplars(
    model: nn.Module, good: tuple[torch.Tensor, int], bad: tuple[torch.Tensor, int], kind: Explanation = "gray_cam"
) -> Exemplars:
    """``C = E(x)`` for the good and the bad pick, with the current model, detached.

    Each pick is ``(image [1,H,W] in [0, 1], true label)``.
    """
    device = next(model.parameters()).device
    images = torch.stack([good[0], bad[0]]).to(device)
    targets = torch.tensor([good[1], bad[1]], device=device)
    with evaluating(model), torch.no_grad():
        state = head_pass(model, images)
        expl = explanation(images, analytic_cams(model, state, targets, images.shape[-2:]), kind)
    return Exemplars(c_good=expl[0], c_bad=expl[1])


def triplet_objective(ex: Exemplars, kind: Explanation, distance: Distance, margin: float) -> Objective:
    """The per-batch triplet term on true-label CAMs, with the share of active triplets."""

    def term(model: nn.Module, batch: Batch, state: HeadPass, training: bool) -> dict[str, torch.Tensor]:
        cams = analytic_cams(model, state, batch.y, batch.x.shape[-2:])
        c_good, c_bad = ex.c_good.to(cams.device), ex.c_bad.to(cams.device)
        terms = triplet_terms(explanation(batch.x, cams, kind), c_good, c_bad, margin, distance)
        return {"expl": terms.mean(), "active_triplets": (terms > 0).float().mean()}

    return Objective(term=term)


def _objective_builder(kind: Explanation | None, distance: Distance | None):
    def build_objective(model: nn.Module, train: Split, pick: Pair, cfg: TermSettings) -> Objective:
        e_kind, e_distance = kind or cfg.explanation, distance or cfg.distance
        x = train.float_images(torch.tensor([pick.good, pick.bad]))
        ex = compute_exemplars(model, (x[0], int(train.labels[pick.good])), (x[1], int(train.labels[pick.bad])), e_kind)
        return triplet_objective(ex, e_kind, e_distance, cfg.margin)

    return build_objective


EXBL = Method(
    name="exbl",
    feedback="two-clicks",
    summary="the paper's eXBL: triplet loss pulling E = image x GradCAM towards the good exemplar's and away from the bad one's",
    source="Hagos, Curran and Mac Namee, Unlearning Spurious Correlations in Chest X-ray Classification (2023), section 3",
    build_objective=_objective_builder(None, None),
)
EXBL_CAM = Method(
    name="exbl-cam",
    feedback="two-clicks",
    summary="eXBL with E = GradCAM alone and unit-length explanations (not the paper's; compared only)",
    source="this project: a variant of the paper's loss",
    build_objective=_objective_builder("cam", "normalized"),
)
