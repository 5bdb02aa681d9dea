"""Occlusion: where hiding a patch of the image lowers the model's confidence.

A square window of infill slides over the image; each pixel's value is the drop of the
target's softmax probability, averaged over the windows that cover it. That is Captum's
``Occlusion`` with ``sliding_window_shapes=(1, patch, patch)``, ``strides=(1, stride,
stride)`` and ``baselines=infill`` on ``softmax(model(x))``, and it measures what the
model *uses*: on the phantom, GradCAM at the paper's layer spreads a shortcut over the
whole 4x4 map, while occlusion of the humerus heads drops the Viral Pneumonia
probability of a shortcut-reliant model (docs/design.md, section 12).

Every occluded copy of every image goes through the BatchNorm-folded network in large
batches under ``no_grad``, and the per-window drops are spread back onto the pixels with
one ``F.fold`` (which sums overlapping windows), so the whole map is tensor code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exbl_core.model import fold_batchnorm

Infill = float | str  # a constant in [0, 1], or "mean": each image's own mean value

# Chosen by measurement on the demo's models (python -m bench.occlusion --sweep RUN; docs/results.md):
# a 32-px window covers a humerus head at 128 px, and stride 16 tiles the image with 7x7 windows,
# a quarter of the forward passes of a 24-px window at stride 8, for the same story.
PATCH, STRIDE, INFILL = 32, 16, "mean"
# Occluded images per forward pass. Small batches win on CPU: a batch's activations stay in the
# cache (at 128 px, one map took 0.26 s in batches of 16 and 0.52 s in batches of 256 on one
# thread, best of 6 alternating runs; python -m bench.occlusion --batches measures it).
FORWARD_BATCH = 16


def check_settings(patch: int, stride: int, infill: Infill) -> None:
    """Refuse settings that cannot make a map, with one line naming the setting."""
    for name, value in (("patch", patch), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"occlusion setting {name} must be a whole number of pixels, got {value!r}")
    if patch < 1:
        raise ValueError(f"occlusion setting patch must be positive, got {patch}")
    if stride < 1:
        raise ValueError(f"occlusion setting stride must be at least 1, got {stride}")
    if isinstance(infill, str):
        if infill != "mean":
            raise ValueError(f"occlusion setting infill must be a number in [0, 1] or 'mean', got {infill!r}")
    elif isinstance(infill, bool) or not isinstance(infill, int | float) or not 0 <= infill <= 1:
        raise ValueError(f"occlusion setting infill must be a number in [0, 1] or 'mean', got {infill!r}")


def infill_values(images: torch.Tensor, infill: Infill) -> torch.Tensor:
    """The value hidden pixels take, per image [N,1,1,1]."""
    if infill == "mean":
        return images.mean((1, 2, 3), keepdim=True)
    return torch.full((len(images), 1, 1, 1), float(infill), dtype=images.dtype, device=images.device)


def window_masks(size: tuple[int, int], patch: int, stride: int, device: torch.device | None = None) -> torch.Tensor:
    """Bool [P,H,W]: one mask per window position, in Captum's order (rows, then columns)."""
    h, w = size
    ys, xs = range(0, h - patch + 1, stride), range(0, w - patch + 1, stride)
    masks = torch.zeros(len(ys) * len(xs), h, w, dtype=torch.bool, device=device)
    for k, (y, x) in enumerate((y, x) for y in ys for x in xs):
        masks[k, y : y + patch, x : x + patch] = True
    return masks


def target_probs(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int = FORWARD_BATCH) -> torch.Tensor:
    """Softmax probability of each image's target [N], in batches."""
    out = [
        model(images[s : s + batch_size]).softmax(1).gather(1, targets[s : s + batch_size, None])[:, 0]
        for s in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else images.new_zeros(0)


class Occlusion:
    """Occlusion maps: the mean drop of the target's probability over the windows covering each pixel.

    Pixels that no window covers (a stride that does not tile the image) get 0, where
    Captum divides by zero.
    """

    name = "occlusion"
    label = "Occlusion"

    def __init__(self, patch: int = PATCH, stride: int = STRIDE, infill: Infill = INFILL) -> None:
        check_settings(patch, stride, infill)
        self.patch, self.stride, self.infill = patch, stride, infill

    @property
    def settings(self) -> dict:
        return {"patch": self.patch, "stride": self.stride, "infill": self.infill}

    def check(self, size: int) -> None:
        """Refuse a window larger than the ``size``-px images it would slide over."""
        if self.patch > size:
            raise ValueError(f"occlusion setting patch {self.patch} is larger than the {size}-px images")

    @torch.no_grad()
    def maps(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int = FORWARD_BATCH) -> torch.Tensor:
        """Occlusion maps [N,H,W] of ``targets`` (signed: negative where hiding a patch raises the probability)."""
        n, _, h, w = images.shape
        self.check(min(h, w))
        device = next(model.parameters()).device
        folded = fold_batchnorm(model)
        windows = window_masks((h, w), self.patch, self.stride, device)  # [P,H,W]
        p = len(windows)
        maps = []
        # Whole images at a time, so that the per-window drops of each image arrive together.
        per_chunk = max(1, batch_size // p)
        for s in range(0, n, per_chunk):
            x = images[s : s + per_chunk].to(device)
            t = targets[s : s + per_chunk].to(device).long()
            fill = infill_values(x, self.infill)
            hidden = windows[None, :, None].to(x.dtype)  # [1,P,1,H,W]
            occluded = (x[:, None] * (1 - hidden) + fill[:, None] * hidden).flatten(0, 1)  # [b*P,1,H,W]
            drops = target_probs(folded, x, t)[:, None] - target_probs(folded, occluded, t.repeat_interleave(p), batch_size).view(-1, p)
            maps.append(self._spread(drops, (h, w)).cpu())
        return torch.cat(maps) if maps else images.new_zeros((0, h, w))

    def _spread(self, drops: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Per-window drops [b,P] -> per-pixel means [b,H,W] over the windows covering each pixel."""
        cols = drops[:, None, :].expand(-1, self.patch * self.patch, -1)
        total = F.fold(cols, size, self.patch, stride=self.stride)[:, 0]
        count = F.fold(torch.ones_like(cols[:1]), size, self.patch, stride=self.stride)[:, 0]
        return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
