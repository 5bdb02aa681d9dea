"""Is a backbone pretrained on formula-driven shapes the lever that makes the shortcut visible?

A network trained from scratch on a few hundred phantoms builds one global "child"
feature, so its GradCAM cannot point at the shoulders (docs/design.md section 8); the paper's
backbone came pretrained, with features that describe their own place. This script gives
ours such a start without a single radiograph or phantom: eight kinds of shapes anywhere
on smooth backgrounds, and a dense target per cell of the final feature map (4x4, or 8x8
at output stride 16), so that each cell must describe what lies under it (Kataoka et al.,
ACCV 2020, "Pre-training without Natural Images", made dense). ``--target centre`` marks the kinds whose centre
lies in the cell, ``--target presence`` every kind that covers part of it. It writes a
backbone-only weights file, which ``experiments.testbed_levers --weights FILE`` then measures:

    python -m experiments.shapes_backbone --out shapes.pt [--target presence] [--output-stride 16] [--steps 1000]
    python -m experiments.testbed_levers --viral 2.0 --weights shapes.pt --seed 0
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exbl_core.files import atomic_write_bytes
from exbl_core.model import build_model

KINDS = ("disc", "ring", "square", "bar", "cross", "triangle", "dots", "stripes")


def _kind_mask(kind: str, du: np.ndarray, dv: np.ndarray, r: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Soft coverage in [0, 1] of one shape of ``kind``, radius ``r`` px, centred at du = dv = 0."""
    c, s = math.cos(angle), math.sin(angle)
    pu, pv = c * du + s * dv, -s * du + c * dv
    dist = np.hypot(du, dv)
    if kind == "disc":
        return np.clip(r - dist, 0, 1)
    if kind == "ring":
        return np.clip(1.5 - np.abs(dist - r), 0, 1) * np.clip(r / 4, 0, 1)
    if kind == "square":
        return np.clip(r * 0.8 - np.maximum(np.abs(pu), np.abs(pv)), 0, 1)
    if kind == "bar":
        return np.clip(r - np.abs(pu), 0, 1) * np.clip(2.0 - np.abs(pv), 0, 1)
    if kind == "cross":
        return np.maximum(
            np.clip(r - np.abs(pu), 0, 1) * np.clip(1.5 - np.abs(pv), 0, 1),
            np.clip(r - np.abs(pv), 0, 1) * np.clip(1.5 - np.abs(pu), 0, 1),
        )
    if kind == "triangle":
        edges = np.maximum.reduce([-pv - r * 0.5, pv * 0.5 + pu * 0.866 - r * 0.5, pv * 0.5 - pu * 0.866 - r * 0.5])
        return np.clip(-edges, 0, 1)
    if kind == "dots":
        out = np.zeros_like(du)
        for _ in range(rng.integers(3, 7)):
            ou, ov = rng.uniform(-r, r, 2)
            out = np.maximum(out, np.clip(2.0 - np.hypot(du - ou, dv - ov), 0, 1))
        return out
    return np.clip(r - dist, 0, 1) * (0.5 + 0.5 * np.sin(pu * rng.uniform(0.6, 1.2)))  # stripes


def shape_image(size: int, grid: int, rng: np.random.Generator, target_kind: str = "centre") -> tuple[np.ndarray, np.ndarray]:
    """One image (float32 [size, size] in [0, 1]) and its target (float32 [kinds, grid, grid]).

    ``target[k, i, j]`` is 1 when a shape of kind k has its centre in (``centre``) or
    covers part of (``presence``) cell (i, j) of a ``grid`` x ``grid`` partition: the final
    feature map's cells for that image size.
    """
    axis = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    image = rng.uniform(0.2, 0.6) + rng.uniform(-0.2, 0.2) * (xx / size - 0.5) + rng.uniform(-0.2, 0.2) * (yy / size - 0.5)
    low = torch.from_numpy(rng.normal(0, 1, (5, 5)).astype(np.float32))[None, None]
    image = image + 0.05 * F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()
    target = np.zeros((len(KINDS), grid, grid), dtype=np.float32)
    for _ in range(rng.integers(3, 9)):
        k = int(rng.integers(len(KINDS)))
        cx, cy = rng.uniform(0, size, 2)
        r, angle = rng.uniform(4, 18), rng.uniform(0, math.pi)
        coverage = _kind_mask(KINDS[k], xx - cx, yy - cy, r, angle, rng)
        image = image + rng.uniform(0.15, 0.45) * rng.choice([-1, 1]) * coverage
        if target_kind == "presence":
            cell = size // grid
            covered = (coverage > 0.5).reshape(grid, cell, grid, cell).max(axis=(1, 3))
            target[k] = np.maximum(target[k], covered)
        else:
            target[k, min(int(cy / size * grid), grid - 1), min(int(cx / size * grid), grid - 1)] = 1.0
    image = image + rng.normal(0, rng.uniform(0.01, 0.05), image.shape)
    return np.clip(image, 0, 1).astype(np.float32), target


def shape_batch(n: int, size: int, grid: int, rng: np.random.Generator, target_kind: str = "centre") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images as ``[n, 1, size, size]`` and their targets as ``[n, kinds, grid, grid]``."""
    images, targets = zip(*(shape_image(size, grid, rng, target_kind) for _ in range(n)), strict=True)
    return torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(targets))


def pretrain_backbone(
    steps: int,
    target_kind: str = "centre",
    output_stride: int = 32,
    batch_size: int = 32,
    lr: float = 1e-3,
    size: int = 128,
    seed: int = 0,
    log_every: int = 50,
) -> dict[str, torch.Tensor]:
    """The trained ``features.*`` state dict.

    A 1x1 convolution on the final feature map predicts the dense target (binary
    cross-entropy), with fresh images every step, Adam and a one-cycle schedule; the head
    is thrown away, only the features carry over. ``output_stride`` 16 pretrains the dilated
    network (``exbl_core.model.dilate_last_stage``) on an 8x8 grid at 128 px; the weights
    have the same shapes either way.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(output_stride=output_stride)
    features = model.features
    grid = size // output_stride
    head = nn.Conv2d(model.last_channel, len(KINDS), 1)
    optimizer = torch.optim.Adam([*features.parameters(), *head.parameters()], lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    started, smoothed = time.perf_counter(), None
    for step in range(steps):
        x, target = shape_batch(batch_size, size, grid, rng, target_kind)
        loss = F.binary_cross_entropy_with_logits(head(features(model.network_input(x))), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        value = loss.item()
        smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step}: loss {smoothed:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return {f"features.{k}": v.detach().clone() for k, v in features.state_dict().items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="where to write the backbone (features.* state dict)")
    p.add_argument("--target", choices=("centre", "presence"), default="centre")
    p.add_argument("--output-stride", type=int, default=32, choices=(16, 32))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.out.exists():
        p.error(f"{args.out} already exists; choose a new file (this script never replaces a file)")
    features = pretrain_backbone(args.steps, args.target, args.output_stride, seed=args.seed)
    buf = io.BytesIO()
    torch.save(features, buf)
    atomic_write_bytes(args.out, buf.getvalue())  # a half-written file must never be taken for weights
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
