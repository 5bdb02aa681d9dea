"""Every explainer scored on the same images: AP (lungs), child CP (shortcut) and deletion.

GradCAM at the paper's layer can hide a shortcut that the model uses (docs/design.md,
section 12), so no map is trusted on sight: for each model and split, ``evaluate``
scores each explainer's maps of the predicted class on one fixed, seeded sample of
images, the same for every model. Occlusion costs one forward pass per window, so the
sample is what keeps evaluation within a minute on 2 CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn

from exbl_core import explainers
from exbl_core.data import Split
from exbl_core.explainers.deletion import deletion_scores
from exbl_core.explainers.gradcam import INFERENCE_BATCH
from exbl_core.explainers.occlusion import INFILL
from exbl_core.metrics import activation_precision_scores, child_confounder_precision
from exbl_core.model import fold_batchnorm

SAMPLE = 64  # at most this many images per split are explained, and at most a quarter of a small split
SPLITS = ("test", "shortcut_test")  # where the explainers are scored: the split Table 1 reports, and where the shortcut shows
DISAGREEMENT = 0.3  # child CPs further apart than this: the explainers tell different stories


def sample_indices(n: int, seed: int, size: int = SAMPLE) -> torch.Tensor:
    """A fixed, seeded choice of ``min(size, max(1, n // 4))`` image indices, sorted: the same for every model of a run.

    A quarter of a small split keeps the quick demo quick; 64 images of the default
    demo's 400 keep occlusion's share of ``evaluate`` near a minute on 2 CPU cores.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[: min(size, max(1, n // 4))].sort().values


@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
    """Softmax probabilities [N,C] of every image, on the CPU: through the BatchNorm-folded copy, in inference's batches."""
    device = next(model.parameters()).device
    folded = fold_batchnorm(model)
    return torch.cat([folded(images[s : s + batch_size].to(device)).softmax(1).cpu() for s in range(0, len(images), batch_size)])


def predicted(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The predicted class of each image [N]."""
    return probabilities(model, images).argmax(1)


def score_explainers(
    model: nn.Module,
    split: Split,
    idx: torch.Tensor,
    names: tuple[str, ...] = explainers.NAMES,
    tau: float = 5.0,
    seen: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, dict]:
    """Per explainer: AP, deletion and (phantom data) child CP of its maps of the predicted class on ``split[idx]``.

    ``deletion`` hides each map's top ``tau``% with occlusion's infill, the same for
    every explainer, so a larger drop means the map found more of what the model uses.
    ``seen`` is what inference over the split already gave for these images (probabilities
    and GradCAMs of the predicted class, as ``predict_with_cams`` returns them), so that
    evaluation does not compute them again.
    """
    x = split.float_images(idx)
    probs, gradcams = seen if seen is not None else (probabilities(model, x), None)
    preds = probs.argmax(1)
    before = probs.gather(1, preds[:, None])[:, 0]
    out: dict[str, dict] = {}
    for name in names:
        maps = gradcams if name == "gradcam" and gradcams is not None else explainers.get(name).maps(model, x, preds)
        scores = {
            "n": len(idx),
            "activation_precision": float(activation_precision_scores(maps, split.masks[idx], tau).mean()) if len(idx) else None,
            "deletion": float(deletion_scores(model, x, maps, preds, INFILL, tau, before).mean()) if len(idx) else None,
        }
        if split.regions is not None and split.child is not None:
            scores["child_cp"], scores["n_child_vp"] = child_confounder_precision(maps, split.regions[idx], split.child[idx], preds, tau)
        out[name] = scores
    return out


def disagreement(split_metrics: dict) -> str | None:
    """One plain sentence when GradCAM and occlusion disagree about the shortcut (child CP apart by > 0.3), else None.

    ``split_metrics`` is one model's shortcut-test entry of metrics.json.
    """
    by = split_metrics.get("by_explainer", {})
    gradcam, occlusion = by.get("gradcam", {}).get("child_cp"), by.get("occlusion", {}).get("child_cp")
    if gradcam is None or occlusion is None or abs(gradcam - occlusion) <= DISAGREEMENT:
        return None
    more, less = ("occlusion", "GradCAM") if occlusion > gradcam else ("GradCAM", "occlusion")
    return (
        f"GradCAM and occlusion disagree about the shortcut: on children called Viral Pneumonia, {more} puts more of its "
        f"top pixels on the shoulders than {less} (child CP {occlusion:.2f} with occlusion, {gradcam:.2f} with GradCAM). "
        "Occlusion measures what the model uses; GradCAM at this layer can hide it."
    )


def lung_share(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per map [N]: the share of its positive mass inside the lung mask (0 for a map with no positive mass)."""
    positive = maps.clamp(min=0).flatten(1)
    inside = (positive * masks.flatten(1).to(positive.dtype)).sum(1)
    return inside / positive.sum(1).clamp(min=1e-12)


def faithful_pick(model: nn.Module, train: Split, per_class: int = 12, seed: int = 0) -> tuple[int, int, dict]:
    """A suggested ``(good, bad)`` pair read from occlusion maps, and what it was chosen from.

    Occlusion of every training image would take minutes, so a seeded sample of up to
    ``per_class`` correctly classified images per class is explained. Bad is the image
    whose map has the least mass inside its lungs (the model decides from elsewhere);
    good is the image of the same class with the most. Needs lung masks.
    """
    if train.masks is None:
        raise ValueError("the suggestion reads lung masks, and this data set has none: pick the pair by hand")
    preds = predicted(model, train.float_images())
    correct = preds == train.labels
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in train.labels.unique().tolist():
        pool = torch.nonzero(correct & (train.labels == c))[:, 0]
        chosen.append(pool[torch.randperm(len(pool), generator=g)[:per_class]])
    idx = torch.cat(chosen).sort().values
    if len(idx) < 2:
        raise ValueError("fewer than two correctly classified training images: train the model longer before picking")
    maps = explainers.get(explainers.FAITHFUL).maps(model, train.float_images(idx), preds[idx])
    share = lung_share(maps, train.masks[idx])
    bad_at = int(share.argmin())
    same = train.labels[idx] == train.labels[idx[bad_at]]
    good_at = int(torch.where(same, share, torch.full_like(share, -1.0)).argmax())
    if good_at == bad_at:
        raise ValueError("no second correctly classified image of the bad one's class was explained: pick the good one by hand")
    found = {"explained": len(idx), "good_lung_share": float(share[good_at]), "bad_lung_share": float(share[bad_at])}
    return int(idx[good_at]), int(idx[bad_at]), found


@torch.no_grad()
def explain(
    model: nn.Module, images: torch.Tensor, names: tuple[str, ...] = explainers.NAMES
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Probabilities [N,C] and, per explainer, display maps [N,H,W] in [0, 1] of the predicted class: what a figure shows."""
    probs = probabilities(model, images)
    preds = probs.argmax(1)
    return probs, {name: explainers.for_display(explainers.get(name).maps(model, images, preds)) for name in names}
