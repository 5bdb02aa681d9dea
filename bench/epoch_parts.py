"""What an epoch adds to its training steps, and a folded copy's cost: the old ways beside today's.

Every epoch of ``fit`` ends with a BatchNorm recalibration over 256 training images and a
validation pass, and every explainer call makes a BatchNorm-folded copy of the model. On the
shipped example's unrefined model (128 px), side by side and alternating
(``common.compare``):

- recalibration in batches of 64 (before) and of the training batch's 32 (now);
- the validation forward in batches of 128 through the model (before) and in inference's
  batches of 16 through a folded copy made for it (now);
- a folded copy made with ``copy.deepcopy`` (before) and by ``model.fold_batchnorm`` (now).

    python -m bench.epoch_parts [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bench.common import compare, scratch_run, table
from exbl_core import assets, run_data, run_models, runs
from exbl_core.explainers.gradcam import INFERENCE_BATCH, head_pass
from exbl_core.model import fold_batchnorm
from exbl_core.training import recalibrate_batchnorm

CPU = torch.device("cpu")


def deepcopy_fold(model: nn.Module) -> nn.Module:
    """The folded copy as it was made before: ``copy.deepcopy``, then each BatchNorm fused into its convolution."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i], module[i + 1] = fuse_conv_bn_eval(module[i], module[i + 1]), nn.Identity()
    return folded


@torch.no_grad()
def forward_all(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    for start in range(0, len(images), batch_size):
        head_pass(model, images[start : start + batch_size])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with scratch_run("epoch-parts-") as out:
        run = assets.new_example_run(out)
        with runs.locked(run.path):
            assets.install(run)
        data = run_data.load_data(run, ("train", "val"))
        model = run_models.load_model(run, "unrefined").eval()
    val = data["val"].float_images()
    parts = {
        "recalibration": {
            "batches of 64": lambda: recalibrate_batchnorm(model, data["train"], CPU, batch_size=64),
            "batches of 32": lambda: recalibrate_batchnorm(model, data["train"], CPU, batch_size=32),
        },
        "validation forward": {
            "model, batches of 128": lambda: forward_all(model.eval(), val, 128),
            f"folded copy, batches of {INFERENCE_BATCH}": lambda: forward_all(fold_batchnorm(model), val, INFERENCE_BATCH),
        },
        "folded copy": {"copy.deepcopy": lambda: deepcopy_fold(model), "fold_batchnorm": lambda: fold_batchnorm(model)},
    }
    rows = []
    for part, fns in parts.items():
        timings = compare(fns, args.repeats)
        before, now = fns
        rows.append([part, before, f"{timings.median(before):.3f}", now, f"{timings.median(now):.3f}", timings.both(now, before)])
    print(f"{len(val)} validation images, 256 recalibration images, torch threads {torch.get_num_threads()}, {args.repeats} repeats")
    print(table(["part", "before", "median s", "now", "median s", "time now / before"], rows))


if __name__ == "__main__":
    main()
