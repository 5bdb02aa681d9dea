"""Activation Precision, accuracy, per-class recall, confusion and shortcut reliance."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from exbl_core.data import CLASSES, VIRAL_PNEUMONIA


def _masks_like(cams: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    if masks.shape[-2:] != cams.shape[-2:]:
        masks = F.interpolate(masks.unsqueeze(1).float(), size=cams.shape[-2:], mode="nearest").squeeze(1)
    return masks.bool()


def activation_precision_scores(cams: torch.Tensor, masks: torch.Tensor, tau: float = 5.0) -> torch.Tensor:
    """Per-image AP [B]: the share of each CAM's top ``tau``% pixels inside the lung mask.

    One batched top-k over all images. An all-zero CAM has no meaningful top-k and
    scores 0 (``count_empty_cams`` reports how many there were).
    """
    if not 0 < tau <= 100:
        raise ValueError(f"tau must be a percentage in (0, 100], got {tau}")
    if cams.shape[0] != masks.shape[0]:
        raise ValueError(f"{cams.shape[0]} CAMs but {masks.shape[0]} masks")
    flat = cams.flatten(1)
    inside = _masks_like(cams, masks).flatten(1)
    k = math.ceil(tau / 100 * flat.shape[1])
    # Only the set of top-k pixels matters, not their order: sorted=False skips sorting
    # them (half of topk's time at 224) and selects the very same set.
    top = flat.topk(k, dim=1, sorted=False).indices
    scores = inside.gather(1, top).float().mean(1)
    return torch.where(flat.amax(1) > 0, scores, torch.zeros_like(scores))


def count_empty_cams(cams: torch.Tensor) -> int:
    """How many CAMs are zero everywhere (the model found no evidence for the class)."""
    return int((cams.flatten(1).amax(1) <= 0).sum())


def activation_precision(cams: torch.Tensor, masks: torch.Tensor, tau: float = 5.0) -> float:
    """Mean Activation Precision over the batch (Quantus TopKIntersection, k = tau% of pixels)."""
    return float(activation_precision_scores(cams, masks, tau).mean())


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """[true, predicted] counts."""
    return torch.bincount(labels * num_classes + preds, minlength=num_classes**2).view(num_classes, num_classes)


def classification_report(labels: torch.Tensor, preds: torch.Tensor) -> dict:
    """Accuracy, per-class recall and the confusion matrix, as plain numbers for JSON."""
    cm = confusion_matrix(labels, preds)
    support = cm.sum(1).clamp(min=1)
    return {
        "accuracy": float((labels == preds).float().mean()),
        "recall": {c: float(r) for c, r in zip(CLASSES, cm.diag() / support, strict=False)},
        "confusion": cm.tolist(),
    }


def evaluate_predictions(labels: torch.Tensor, preds: torch.Tensor, cams: torch.Tensor, masks: torch.Tensor, tau: float = 5.0) -> dict:
    """Every metric of one split: classification plus AP and the number of empty CAMs."""
    report = classification_report(labels, preds)
    report["activation_precision"] = activation_precision(cams, masks, tau)
    report["n_empty_cams"] = count_empty_cams(cams)
    report["n"] = len(labels)
    return report


def shortcut_gap(confounded: dict, shortcut_test: dict) -> dict:
    """How much the model leans on the confounder: the accuracy lost when it is decorrelated."""
    vp = CLASSES[VIRAL_PNEUMONIA]
    return {
        "accuracy_gap": confounded["accuracy"] - shortcut_test["accuracy"],
        "vp_recall_confounded": confounded["recall"][vp],
        "vp_recall_shortcut_test": shortcut_test["recall"][vp],
    }
