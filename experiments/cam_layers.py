"""Where in the network is the shortcut visible? GradCAM at several layers of one trained model.

A measurement, not a speed benchmark. The paper's GradCAM reads the last convolutional
layer, ``features[18]``. For each layer asked for, this reports the two figures the fair
testbed asks of a CAM (docs/design.md section 3): child CP on the shortcut-test split (the
children the model calls Viral Pneumonia) and AP of the three classes without the
confounder on the test split, each image explained for its predicted class as everywhere
else. The map sizes at 128 px: ``features[18]`` to ``[14]`` 4x4, ``[13]`` to ``[7]`` 8x8,
``[6]`` to ``[4]`` 16x16.

    python -m experiments.cam_layers runs/demo [--which unrefined] [--layers 18 16 14 10 7 6]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from exbl_core import run_data, run_models, runs
from exbl_core.data import CLASSES, VIRAL_PNEUMONIA, Split
from exbl_core.explainers.gradcam import gradcam
from exbl_core.metrics import evaluate_predictions

PAPER_LAYER = 18
DEFAULT_LAYERS = (18, 16, 14, 10, 7, 6)


def ap_other(ap_by_class: dict[str, float]) -> float:
    """Mean AP of the three classes without the confounder: the testbed's "CAMs differ" figure."""
    others = [ap for name, ap in ap_by_class.items() if name != CLASSES[VIRAL_PNEUMONIA]]
    return sum(others) / len(others)


def layer_cams(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, layer: nn.Module, batch: int = 64) -> torch.Tensor:
    """GradCAMs [N,H,W] of ``targets`` at ``layer``, finished as every CAM is (ReLU, upsampled, max-normalised)."""
    return torch.cat(
        [
            gradcam(model, images[i : i + batch], targets[i : i + batch], route="autograd", target_layer=layer).detach()
            for i in range(0, len(images), batch)
        ]
    )


def layer_scores(model: nn.Module, test: Split, shortcut_test: Split, layers: Sequence[int]) -> dict[int, dict]:
    """Per layer index of ``model.features``: ``child_cp``, ``n_child_vp`` and ``ap_other``."""
    model.eval()
    with torch.no_grad():
        preds = {name: model(s.float_images()).argmax(1) for name, s in (("test", test), ("shortcut_test", shortcut_test))}
    scores = {}
    for index in layers:
        layer = model.features[index]
        on_test = evaluate_predictions(test.labels, preds["test"], layer_cams(model, test.float_images(), preds["test"], layer), test.masks)
        cams = layer_cams(model, shortcut_test.float_images(), preds["shortcut_test"], layer)
        on_shortcut = evaluate_predictions(
            shortcut_test.labels,
            preds["shortcut_test"],
            cams,
            shortcut_test.masks,
            regions=shortcut_test.regions,
            child=shortcut_test.child,
        )
        scores[index] = {
            "child_cp": on_shortcut["child_cp"],
            "n_child_vp": on_shortcut["n_child_vp"],
            "ap_other": ap_other(on_test["ap_by_class"]),
        }
    return scores


def render(scores: dict[int, dict]) -> str:
    lines = [
        "| GradCAM layer | child CP | children called Viral Pneumonia | AP, three classes without the confounder |",
        "|---|---|---|---|",
    ]
    for index, s in scores.items():
        name = f"`features[{index}]`" + (" (the paper's)" if index == PAPER_LAYER else "")
        cp = "" if s["child_cp"] is None else f"{s['child_cp']:.3f}"
        lines.append(f"| {name} | {cp} | {s['n_child_vp']} | {s['ap_other']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder on synthetic data")
    p.add_argument("--which", default="unrefined", help="unrefined, oracle or a refinement method's name")
    p.add_argument("--layers", type=int, nargs="+", default=list(DEFAULT_LAYERS), help="indices into model.features (0 to 18)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args()
    if any(not 0 <= i <= PAPER_LAYER for i in args.layers):
        p.error(f"--layers must be indices 0 to {PAPER_LAYER} of model.features")
    run = runs.open_run(args.run)
    if run.config()["data"]["source"] != "synthetic":
        p.error(f"{args.run}: child CP needs synthetic data, which knows the confounder region")
    model = run_models.load_model(run, args.which, torch.device("cpu"))
    scores = layer_scores(model, run_data.load_split(run, "test"), run_data.load_split(run, "shortcut_test"), args.layers)
    print(json.dumps({str(k): v for k, v in scores.items()}) if args.json else render(scores))


if __name__ == "__main__":
    main()
