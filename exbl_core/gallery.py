"""Real radiographs shown with their lung masks and a run's maps, and the shoulders cropped.

A model trained on the phantoms has never seen a real radiograph: its predictions and maps on
one are off its domain, and are shown to compare where it looks, not what it says. The shoulder
crops put the phantom's confounder (a child's humerus heads, with their growth plates) beside
its real counterpart: the real children's humerus heads and the adult's.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from exbl_core import explainers, faithfulness
from exbl_core.data import CLASSES, Gallery, read_gray
from exbl_core.figures import EXPLAINER_LABELS, mask_outline, overlay

OFF_DOMAIN = (
    "The model was trained on synthetic phantoms: on real radiographs it is off its domain, so its predicted classes "
    "mean nothing here. Its maps still show where it looks."
)
OUTLINE = np.array([0.0, 0.86, 1.0])


def for_display(gray: np.ndarray) -> np.ndarray:
    """The 1st to 99th percentile stretched to [0, 1], for the eye only: a 15-bit radiograph
    scaled by its bit depth looks washed out. Models and masks never see this."""
    lo, hi = np.percentile(gray, (1, 99))
    return np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def outlined(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] with the lung mask's boundary drawn in."""
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[mask_outline(mask)] = OUTLINE
    return rgb


def shoulder_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of the image's two upper outer corners beside the lung apices,
    where the humerus heads lie: squares placed from the lung mask's bounding box, so they
    follow the patient's position and size. The image's left side first."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    top, left, right = rows.min(), cols.min(), cols.max()
    width = right - left + 1
    side = int(0.38 * width)
    y0 = max(0, int(top - 0.12 * width))
    y1 = min(h, y0 + side)
    x0 = max(0, int(left - 0.25 * width))
    x1 = min(w, right + 1 + int(0.25 * width))
    return [(y0, y1, x0, min(w, x0 + side)), (y0, y1, max(0, x1 - side), x1)]


def shoulder_crops(image: Path, mask: Path, size: int = 160) -> list[np.ndarray]:
    """The two shoulder crops of one radiograph at full resolution, each resized to ``size`` and stretched for display."""
    gray, lungs = read_gray(image), read_gray(mask) > 0.5
    crops = []
    for y0, y1, x0, x1 in shoulder_boxes(lungs):
        crop = torch.from_numpy(np.ascontiguousarray(gray[y0:y1, x0:x1]))[None, None]
        crops.append(for_display(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0, 0].numpy()))
    return crops


@torch.no_grad()
def explain(model: torch.nn.Module, gallery: Gallery, chosen: list[explainers.Explainer]) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """The model's predicted classes and, per explainer, display maps [N,H,W] in [0, 1] on the gallery's images."""
    x = gallery.images.float().div(255.0)
    preds = faithfulness.predicted(model, x)
    return preds, {e.name: explainers.for_display(e.maps(model, x, preds)).numpy() for e in chosen}


def figure(model: torch.nn.Module, gallery: Gallery, rows: list[int], chosen: list[explainers.Explainer]) -> plt.Figure:
    """One row per chosen image (each with a lung mask): the input with its lungs outlined, each
    explainer's map over it, and both shoulders at full resolution."""
    sub = gallery.subset(rows)
    preds, maps = explain(model, sub, chosen)
    titles = ["Input, lungs outlined", *(EXPLAINER_LABELS[e.name] for e in chosen), "Shoulder (image left)", "Shoulder (image right)"]
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(2.3 * len(titles), 2.5 * len(rows) + 0.6), squeeze=False)
    for r in range(len(rows)):
        gray = for_display(sub.images[r, 0].float().div(255).numpy())
        panels = [outlined(gray, sub.masks[r].numpy())]
        panels += [overlay(gray, maps[e.name][r]) for e in chosen]
        panels += shoulder_crops(sub.paths[r], sub.mask_paths[r])
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        label = f"{sub.classes[int(sub.labels[r])]}\n{sub.paths[r].name}\npredicted: {CLASSES[int(preds[r])]}\n(off its domain)"
        axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
    fig.suptitle(OFF_DOMAIN, fontsize=10, wrap=True)
    fig.tight_layout()
    return fig
