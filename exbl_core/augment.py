"""Training-time augmentation: random whole-pixel shifts, horizontal flips and hidden patches.

Why it matters here: the phantoms are almost aligned, so a network trained on them
can encode *where* a part is instead of detecting it, and its GradCAM then spreads
the evidence over the whole map. Shifting every image by a random number of pixels
makes the detectors follow the anatomy, so the explanations do too. Masks (the lung
mask, the confounder region) move with their image, so that losses that read them
stay exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(tensors: list[torch.Tensor], max_shift: float, flip: bool, generator: torch.Generator) -> list[torch.Tensor]:
    """Shift (and flip) every tensor of the batch alike; each is [B,H,W] or [B,C,H,W].

    ``max_shift`` is the largest shift as a share of the image size. Shifts are whole
    pixels, so nearest sampling copies pixels exactly and boolean masks stay boolean.
    Uncovered borders are filled with 0 (background; outside any mask).
    """
    if max_shift <= 0 and not flip:
        return tensors
    first = tensors[0]
    b, (h, w) = first.shape[0], first.shape[-2:]
    limit = round(max_shift * min(h, w))
    shifts = torch.randint(-limit, limit + 1, (b, 2), generator=generator).float()
    mirror = (torch.rand(b, generator=generator) < 0.5) if flip else torch.zeros(b, dtype=torch.bool)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(mirror, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = -2.0 * shifts[:, 0] / w
    theta[:, 1, 2] = -2.0 * shifts[:, 1] / h
    grid = F.affine_grid(theta.to(first.device), [b, 1, h, w], align_corners=False)
    out = []
    for t in tensors:
        x = t.unsqueeze(1) if t.dim() == 3 else t
        moved = F.grid_sample(x.float(), grid.to(x.device), mode="nearest", padding_mode="zeros", align_corners=False)
        moved = moved.squeeze(1) if t.dim() == 3 else moved
        out.append(moved.to(t.dtype) if t.dtype == torch.bool else moved)
    return out


def hide_patches(x: torch.Tensor, prob: float, patch: int, generator: torch.Generator) -> torch.Tensor:
    """Hide-and-seek (Singh and Lee, ICCV 2017): each ``patch``-pixel cell of a grid is hidden with ``prob``.

    Why: with its most telling part hidden now and then, a network has to find every
    part that speaks for the class, and its CAM localises better. A hidden cell takes
    the image's mean, so test-time statistics stay close; masks are left as they are,
    since nothing moves. ``x`` is [B,C,H,W].
    """
    if prob <= 0:
        return x
    b, _, h, w = x.shape
    keep = (torch.rand(b, 1, -(-h // patch), -(-w // patch), generator=generator) >= prob).float().to(x.device)
    keep = keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[:, :, :h, :w]
    return x * keep + x.mean((1, 2, 3), keepdim=True) * (1 - keep)
