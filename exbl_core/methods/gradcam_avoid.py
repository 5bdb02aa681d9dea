"""``gradcam-avoid``: penalise GradCAM inside the region the two clicks mark as "do not look here".

``gradcam-lungs`` with the allowed region replaced by everything outside the region
where the bad explanation looks and the good one does not (``region.py``): the same
region for every image, since radiographs are roughly aligned. Feedback: two clicks.
"""

from __future__ import annotations

from torch import nn

from exbl_core.data import Split
from exbl_core.gradcam import analytic_cams
from exbl_core.methods.base import Batch, Method, Objective, Pick
from exbl_core.methods.gradcam_mask import outside_share
from exbl_core.methods.region import avoid_region


def prepare(model: nn.Module, train: Split, pick: Pick, cfg) -> Objective:
    allowed = ~avoid_region(model, train, pick)

    def term(model: nn.Module, batch: Batch, state, training: bool) -> dict:
        cams = analytic_cams(model, state, batch.y, batch.x.shape[-2:])
        return {"term": outside_share(cams, allowed.to(cams.device).expand_as(cams)).mean()}

    return Objective(term=term)


METHOD = Method(
    name="gradcam-avoid",
    feedback="two-clicks",
    summary="the share of each true-class GradCAM inside the region where the bad explanation looks and the good one does not is penalised",
    source="this project; RRR-G (Schramowski et al., 2020) with a region read from the two clicks",
    prepare=prepare,
)
