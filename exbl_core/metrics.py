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
    scores 0 (``count_empty_cams`` reports how many there were). Where pixels tie at
    the k-th value, which of them count is arbitrary, as with ``torch.topk``.
    """
    if not 0 < tau <= 100:
        raise ValueError(f"tau must be a percentage in (0, 100], got {tau}")
    if cams.shape[0] != masks.shape[0]:
        raise ValueError(f"{cams.shape[0]} CAMs but {masks.shape[0]} masks")
    flat = cams.flatten(1)
    inside = _masks_like(cams, masks).flatten(1)
    k = math.ceil(tau / 100 * flat.shape[1])
    shares, peaks = _top_k_share_chunked(flat, inside, k) or _top_k_share(flat, inside, k)
    return torch.where(peaks > 0, shares, torch.zeros_like(shares))


def _top_k_share(flat: torch.Tensor, inside: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of each row's k largest values that are ``inside`` [B], and each row's maximum [B].

    Only the set of top-k pixels matters, not their order: ``sorted=False`` skips
    sorting them and selects the very same set.
    """
    values, top = flat.topk(k, dim=1, sorted=False)
    return inside.gather(1, top).float().mean(1), values.amax(1)


CHUNK = 32
"""Pixels per chunk of the pre-filter in ``_top_k_share_chunked``."""


def _top_k_share_chunked(flat: torch.Tensor, inside: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``_top_k_share`` with an exact pre-filter; ``None`` where it would not pay off.

    A CAM's top 5% is a few compact blobs, so the k largest pixels lie in few
    runs of ``CHUNK`` pixels. Keeping the ``3*ceil(k/CHUNK)`` runs with the largest
    maxima and taking the top-k of those alone reads about 15% of the pixels. The
    result is exact: a row is re-done in full when a discarded run could hold a
    value above its k-th (its best discarded maximum exceeds the k-th candidate).
    Non-negative floats order like their int32 bit patterns, and the integer top-k
    is about 1.4x faster. Together: 2.6x faster than the plain top-k for 800 CAMs
    at 224 (bench/activation_precision.py).
    """
    rows, n = flat.shape
    n_chunks = n // CHUNK
    n_kept = 3 * math.ceil(k / CHUNK)
    if n % CHUNK or 2 * n_kept > n_chunks:
        return None
    flat = flat.contiguous()
    chunk_max = flat.view(rows, n_chunks, CHUNK).amax(2)
    kept_max, kept = chunk_max.topk(n_kept, dim=1, sorted=False)
    runs = (kept + torch.arange(rows, device=flat.device)[:, None] * n_chunks).flatten()
    candidates = flat.reshape(rows * n_chunks, CHUNK).index_select(0, runs).view(rows, -1)
    candidates_inside = inside.reshape(rows * n_chunks, CHUNK).index_select(0, runs).view(rows, -1)
    as_keys = (lambda t: t.view(torch.int32)) if bool(candidates.amin() >= 0) else (lambda t: t)
    values, top = as_keys(candidates).topk(k, dim=1, sorted=False)
    shares = candidates_inside.gather(1, top).sum(1, dtype=torch.float32) / k
    missed = (as_keys(kept_max.amin(1)) > values.amin(1)).nonzero().squeeze(1)
    if len(missed):
        shares[missed] = _top_k_share(flat[missed], inside[missed], k)[0]
    return shares, kept_max.amax(1)


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


def confounder_precision_scores(cams: torch.Tensor, regions: torch.Tensor, tau: float = 5.0) -> torch.Tensor:
    """Per-image Confounder Precision [B]: the share of each CAM's top ``tau``% pixels in the confounder region.

    AP's machinery with another mask: where AP asks "does the model look at the lungs?",
    CP asks "does it look at the shortcut?" (the humerus heads with their epiphyses,
    which the synthetic phantom knows exactly).
    """
    return activation_precision_scores(cams, regions, tau)


def child_confounder_precision(
    cams: torch.Tensor, regions: torch.Tensor, child: torch.Tensor, preds: torch.Tensor, tau: float = 5.0
) -> tuple[float | None, int]:
    """Mean CP over the children that the model calls Viral Pneumonia, and how many there were.

    These are the images whose Viral Pneumonia explanation should sit on the shoulders
    when the shortcut is used. ``None`` when the model calls no child Viral Pneumonia.
    """
    chosen = child.bool() & (preds == VIRAL_PNEUMONIA)
    n = int(chosen.sum())
    if n == 0:
        return None, 0
    return float(confounder_precision_scores(cams[chosen], regions[chosen], tau).mean()), n


def evaluate_predictions(
    labels: torch.Tensor,
    preds: torch.Tensor,
    cams: torch.Tensor,
    masks: torch.Tensor,
    tau: float = 5.0,
    regions: torch.Tensor | None = None,
    child: torch.Tensor | None = None,
) -> dict:
    """Every metric of one split: classification, AP (overall and per true class), empty CAMs.

    With the confounder ``regions`` and ``child`` flags (synthetic data), also Confounder
    Precision over all images and ``child_cp`` over the children called Viral Pneumonia.
    """
    report = classification_report(labels, preds)
    ap = activation_precision_scores(cams, masks, tau)
    report["activation_precision"] = float(ap.mean())
    report["ap_by_class"] = {c: float(ap[labels == i].mean()) for i, c in enumerate(CLASSES) if bool((labels == i).any())}
    report["n_empty_cams"] = count_empty_cams(cams)
    report["n"] = len(labels)
    if regions is not None and child is not None:
        report["confounder_precision"] = float(confounder_precision_scores(cams, regions, tau).mean())
        report["child_cp"], report["n_child_vp"] = child_confounder_precision(cams, regions, child, preds, tau)
    return report


def shortcut_gap(confounded: dict, shortcut_test: dict) -> dict:
    """How much the model leans on the confounder: the accuracy lost when it is decorrelated."""
    vp = CLASSES[VIRAL_PNEUMONIA]
    return {
        "accuracy_gap": confounded["accuracy"] - shortcut_test["accuracy"],
        "vp_recall_confounded": confounded["recall"][vp],
        "vp_recall_shortcut_test": shortcut_test["recall"][vp],
    }
