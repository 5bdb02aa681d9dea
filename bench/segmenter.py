"""The lung segmenter on the real sample: seconds per image and agreement with its native input size.

    python -m bench.segmenter [--data real-sample] [--repeats 2]

Every setting segments the same 17 radiographs (read once), in batches of 4, timed side by side
(bench.common.compare). Agreement is the IoU of each setting's masks with those at 512 px in fp32,
the size the network was trained at: a Dice-free measure of what a smaller input costs. Then the
`masks` command runs end to end on a copy of the images without masks, as a user runs it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, compare, load_average, machine, table
from exbl_core import segmenter
from exbl_core.data import read_gray, scan_gallery

SETTINGS = {"512 fp32": (512, False), "512 bf16": (512, True), "256 fp32": (256, False), "256 bf16": (256, True)}
BATCH = 4


def masks_for(model: segmenter.LungUNet, images: list[np.ndarray], size: int, bf16: bool) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for i in range(0, len(images), BATCH):
        out += segmenter.lung_masks(model, images[i : i + BATCH], size, bf16)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def cli_run(data: Path) -> float:
    """Seconds for `python -m exbl_core masks` on a copy of ``data``'s images, without masks."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "sample"
        for cls, pairs in scan_gallery(data).items():
            (copy / cls / "images").mkdir(parents=True)
            for image, _ in pairs:
                shutil.copyfile(image, copy / cls / "images" / image.name)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "exbl_core", "masks", "--data", str(copy)], check=True, cwd=ROOT, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "real-sample")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    images = [read_gray(image) for pairs in scan_gallery(args.data).values() for image, _ in pairs]
    model = segmenter.load_segmenter()
    load_before = load_average()
    masks = {name: masks_for(model, images, *setting) for name, setting in SETTINGS.items()}
    timings = compare({name: lambda s=setting: masks_for(model, images, *s) for name, setting in SETTINGS.items()}, args.repeats, 0)
    cli_seconds = cli_run(args.data)
    reference = masks["512 fp32"]
    rows = []
    for name in SETTINGS:
        ious = [iou(a, b) for a, b in zip(masks[name], reference, strict=True)]
        cover = [float(m.mean()) for m in masks[name]]
        per_image = timings.best(name) / len(images)
        rows.append(
            [
                name,
                f"{per_image:.2f}",
                timings.both(name, "512 fp32"),
                f"{np.mean(ious):.3f} / {min(ious):.3f}",
                f"{min(cover):.2f}-{max(cover):.2f}",
            ]
        )
    m = machine()
    print(f"{len(images)} radiographs from {args.data}; {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)")
    print(f"load average before {load_before}, after {load_average()}; repeats {args.repeats}, batch {BATCH}\n")
    headers = ["input", "s per image (best)", "time / 512 fp32, best (median)", "IoU with 512 fp32: mean / min", "lung share of image"]
    print(table(headers, rows))
    defaults = f"{segmenter.DEFAULT_SIZE} px, {'bf16' if segmenter.bf16_native() else 'fp32'}"
    print(f"\n`python -m exbl_core masks` on the {len(images)} images ({defaults}; reading and writing included): {cli_seconds:.1f} s")


if __name__ == "__main__":
    main()
