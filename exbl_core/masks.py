"""Lung masks for a data set folder from the segmenter: only where an image has none.

Every image is read first (a file that cannot be read stops everything before anything is
written, naming the file); then the images go through the network in batches and each mask is
written as a PNG named as its image, under the class's ``masks/`` folder. A mask that is already
there, under any image extension, is never replaced.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from exbl_core import segmenter
from exbl_core.data import read_gray, scan_gallery
from exbl_core.files import atomic_write_bytes


@dataclass(frozen=True)
class Todo:
    """An image without a lung mask: where its mask goes, and what the network reads."""

    image: Path
    mask: Path
    shape: tuple[int, int]
    inputs: torch.Tensor  # [1, S, S], from segmenter.network_input


def without_masks(root: Path) -> tuple[list[Path], int]:
    """The images under ``root`` that have no lung mask yet, and how many images there are in all."""
    found = scan_gallery(root)
    return [image for pairs in found.values() for image, mask in pairs if mask is None], sum(map(len, found.values()))


def load_images(images: list[Path], size: int, workers: int = 4) -> list[Todo]:
    """Read every image and make the network's input; raises DataError naming the first bad file."""

    def one(image: Path) -> Todo:
        gray = read_gray(image)
        return Todo(image, image.parent.parent / "masks" / f"{image.stem}.png", gray.shape, segmenter.network_input(gray, size))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, images))


def png_bytes(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_masks(
    model: segmenter.LungUNet, todo: list[Todo], batch: int = 4, bf16: bool = False, on_batch: Callable[[int], None] = lambda n: None
) -> tuple[list[Path], list[Path]]:
    """Segment ``todo`` in batches and write each mask; returns (written, no lung found).

    A prediction with no lung pixel is not written: the loader would refuse it, and an image
    without a mask is said as such rather than hidden behind an empty one.
    """
    written: list[Path] = []
    empty: list[Path] = []
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        logits = segmenter.lung_logits(model, torch.stack([t.inputs for t in chunk]), bf16)
        for t, lg in zip(chunk, logits, strict=True):
            mask = segmenter.mask_at(lg, t.shape)
            if not mask.any():
                empty.append(t.image)
            elif not t.mask.exists():  # checked again at the last moment: never replace a mask
                atomic_write_bytes(t.mask, png_bytes(mask))
                written.append(t.mask)
        on_batch(len(chunk))
    return written, empty
