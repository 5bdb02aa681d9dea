"""Where does a model see the shortcut? A measurement of a trained run, not a speed benchmark.

For every image of the ``shortcut_test`` split (where child anatomy is drawn
independently of the class) it takes the Viral Pneumonia GradCAM *before* ReLU,
upsampling and normalisation, at the target layer's own resolution (4x4 at 128 px),
and prints the mean map of the children minus the mean map of the adults. Where the
child-minus-adult difference is large is where the model's Viral Pneumonia evidence
comes from the confounder. Humerus heads, and so the epiphyses, sit in the two top
corner cells.

    python -m experiments.shortcut_map runs/demo [--which unrefined|oracle|METHOD]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from exbl_core import run_data, run_models, runs
from exbl_core.data import CLASSES, VIRAL_PNEUMONIA
from exbl_core.explainers.gradcam import head_pass, weighted_maps


@torch.no_grad()
def shortcut_map(model: torch.nn.Module, images: torch.Tensor, child: torch.Tensor, target: int = VIRAL_PNEUMONIA) -> dict:
    """Mean signed GradCAM map of ``target`` over children and over adults, and their difference."""
    model.eval()
    maps = torch.cat([weighted_maps(model, head_pass(model, x), torch.full((len(x),), target)) for x in images.split(64)])
    kids, adults = maps[child].mean(0), maps[~child].mean(0)
    return {"child": kids, "adult": adults, "difference": kids - adults}


def render(result: dict, target: int) -> str:
    diff = result["difference"]
    rows = [" ".join(f"{v:6.2f}" for v in row.tolist()) for row in diff]
    corners = float(torch.stack([diff[0, 0], diff[0, -1]]).mean())
    return "\n".join(
        [
            f"{CLASSES[target]} GradCAM before ReLU, children minus adults (rows top to bottom):",
            *rows,
            f"top corners (humerus heads) {corners:.2f}; whole map mean {float(diff.mean()):.2f}; "
            f"smallest cell {float(diff.min()):.2f}, largest {float(diff.max()):.2f}",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder on synthetic data")
    p.add_argument("--which", default="unrefined", help="unrefined, oracle or a refinement method's name")
    args = p.parse_args()
    run = runs.open_run(args.run)
    if run.config()["data"]["source"] != "synthetic":
        p.error(f"{args.run}: the shortcut map needs synthetic data, which records who is a child")
    split = run_data.load_split(run, "shortcut_test")
    model = run_models.load_model(run, args.which, torch.device("cpu"))
    print(render(shortcut_map(model, split.float_images(), split.child.bool()), VIRAL_PNEUMONIA))


if __name__ == "__main__":
    main()
