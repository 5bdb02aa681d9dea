"""The eXBL explanation loss (paper, section 3).

``E(x) = gray(x) * cam(x)``, flattened. For each training image
``l_i = max(d(E(x_i), C_good) - d(E(x_i), C_bad) + margin, 0)``: pull every
explanation towards the good exemplar and away from the bad one.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Distance = Literal["euclidean", "normalized"]
DISTANCES: tuple[str, ...] = ("euclidean", "normalized")
Explanation = Literal["gray_cam", "cam"]
EXPLANATIONS: tuple[str, ...] = ("gray_cam", "cam")


def explanation(images: torch.Tensor, cams: torch.Tensor, kind: Explanation = "gray_cam") -> torch.Tensor:
    """``E(x)`` as [B, H*W]; ``images`` are [B,1,H,W] (or [B,H,W]) in [0, 1].

    ``gray_cam`` is the paper's ``gray(x) * cam(x)``. ``cam`` leaves the image out: in a
    radiograph the lungs are the darkest region, so the paper's E weights attention on
    bright bone and the mediastinum most and attention on the lungs least, and matching
    E to a good exemplar then rewards looking at bright structures. ``cam`` is offered
    to study that; it departs from the paper, which stays the default.
    """
    if kind not in EXPLANATIONS:
        raise ValueError(f"unknown explanation {kind!r}; choose one of {', '.join(EXPLANATIONS)}")
    gray = images[:, 0] if images.dim() == 4 else images
    if gray.shape != cams.shape:
        raise ValueError(f"images {tuple(gray.shape)} and CAMs {tuple(cams.shape)} differ in size")
    return (cams if kind == "cam" else gray * cams).flatten(1)


def triplet_terms(
    expl: torch.Tensor, c_good: torch.Tensor, c_bad: torch.Tensor, margin: float = 1.0, distance: Distance = "euclidean"
) -> torch.Tensor:
    """Per-sample hinge terms l_i [B]; ``l_i > 0`` marks a triplet that still pushes.

    ``normalized`` scales every E to unit L2 norm first, so that the margin keeps its
    meaning whatever the image size (with 16k-pixel E vectors the paper's Euclidean
    hinge is satisfied within an epoch or two).
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    c_good, c_bad = c_good.reshape(1, -1), c_bad.reshape(1, -1)
    if distance == "normalized":
        expl, c_good, c_bad = (F.normalize(t, dim=1) for t in (expl, c_good, c_bad))
    d_good = torch.linalg.vector_norm(expl - c_good, dim=1)
    d_bad = torch.linalg.vector_norm(expl - c_bad, dim=1)
    return F.relu(d_good - d_bad + margin)


def exbl_loss(
    expl: torch.Tensor, c_good: torch.Tensor, c_bad: torch.Tensor, margin: float = 1.0, distance: Distance = "euclidean"
) -> torch.Tensor:
    """The batch mean of the triplet hinge terms: a scalar."""
    return triplet_terms(expl, c_good, c_bad, margin, distance).mean()
