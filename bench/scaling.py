"""Scaling: time per unrefined and per refined epoch for 400, 800 and 1,600 training images.

One epoch of ``training.fit`` per size, at 128 px, from the same seed. An epoch is the
training loop plus two fixed costs that do not grow with the training set: BatchNorm
recalibration (at most 256 images) and validation (a fixed 40-image split here). The
training loop alone is timed from the ``batch_end`` events (from the end of the first
batch to the end of the last, so the optimiser's first-step setup is left out) and
should cost the same per image at every size; the whole epoch should be a straight
line ``a + b * n``.

    python -m bench.scaling --sizes 400 800 1600
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import Section, table
from exbl_core.config import RefineConfig
from exbl_core.data import CLASSES, Split
from exbl_core.methods import Pair, get_method
from exbl_core.model import build_model
from exbl_core.synthetic import SyntheticConfig, generate_split
from exbl_core.training import fit


def one_epoch(train: Split, val: Split, refined: bool, cfg: RefineConfig) -> dict:
    """Seconds for one epoch and seconds per image of its training loop."""
    torch.manual_seed(cfg.seed)
    model = build_model(num_classes=len(CLASSES))
    objective = get_method(cfg.method).build_objective(model, train, Pair(0, 1), cfg) if refined else None
    stamps: list[float] = []
    records: list[dict] = []

    def on_event(event: dict) -> None:
        if event["type"] == "batch_end":
            stamps.append(time.perf_counter())
        elif event["type"] == "epoch_end":
            records.append(event)

    fit(model, train, val, cfg, objective, on_event=on_event, phase="refine" if refined else "unrefined")
    loop_images = len(train) - cfg.batch_size  # every batch after the first
    return {"epoch_s": records[0]["seconds"], "loop_s_per_image": (stamps[-1] - stamps[0]) / loop_images}


def linear_fit(ns: list[int], ts: list[float]) -> tuple[float, float, float]:
    """Least-squares ``t = a + b n``: intercept, slope and the largest relative residual."""
    n = torch.tensor(ns, dtype=torch.float64)
    t = torch.tensor(ts, dtype=torch.float64)
    design = torch.stack([torch.ones_like(n), n], 1)
    a, b = torch.linalg.lstsq(design, t.unsqueeze(1)).solution.squeeze(1).tolist()
    residual = float(((t - (a + b * n)) / t).abs().max())
    return a, b, residual


def run(sizes: tuple[int, ...] = (400, 800, 1600), image_size: int = 128) -> Section:
    cfg = RefineConfig(epochs=1, lr=1e-3)  # the unrefined epoch reads only the training loop's settings
    val = generate_split("val", SyntheticConfig(size=image_size, n_val=10))
    rows, data = [], {}
    for phase, refined in (("unrefined", False), ("refined", True)):
        results = {}
        for n in sizes:
            train = generate_split("train", SyntheticConfig(size=image_size, n_train=n // 4))
            results[n] = one_epoch(train, val, refined, cfg)
            print(f"  {phase} {n}: {results[n]['epoch_s']:.1f} s", flush=True)
        a, b, residual = linear_fit(list(sizes), [results[n]["epoch_s"] for n in sizes])
        data[phase] = {"epochs": results, "intercept_s": a, "slope_s_per_image": b, "max_rel_residual": residual}
        for n in sizes:
            r = results[n]
            rows.append([phase, n, f"{r['epoch_s']:.1f}", f"{r['epoch_s'] / n * 1000:.1f}", f"{r['loop_s_per_image'] * 1000:.1f}"])
        rows.append([phase, "fit `a + b·n`", f"a = {a:.1f} s", f"b = {b * 1000:.1f}", f"largest residual {residual:.1%}"])
    md = [
        f"One epoch per size at {image_size} px, batch {cfg.batch_size}, validation on 40 images, each epoch from a fresh model.",
        "Sizes run one after another (not interleaved), so background load adds noise here.",
        "",
        table(["phase", "training images", "epoch s", "epoch ms / image", "training loop ms / image"], rows),
    ]
    return Section("5. Scaling", "\n".join(md), [], data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[400, 800, 1600])
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args()
    print(run(tuple(args.sizes), args.image_size).render())


if __name__ == "__main__":
    main()
