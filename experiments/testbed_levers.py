"""Is the phantom a fair testbed? Train the unrefined model (or the oracle) under one set of levers.

A measurement, not a speed benchmark: it prints one JSON line with what the testbed
needs (docs/design.md section 3): test and shortcut-test accuracy, the gap, AP per class,
child CP, and the children-minus-adults Viral Pneumonia map at the CAM's resolution.

    python -m experiments.testbed_levers --viral 2.0 --shift 0.1 --flip [--hide 0.33 --hide-patch 32] [--sides one]
        [--weights FILE] [--oracle] [--cam-layers 18 14 6] [--seed 0] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from exbl_core import config
from exbl_core.data import VIRAL_PNEUMONIA
from exbl_core.explainers.gradcam import predict_with_cams
from exbl_core.files import atomic_write_bytes
from exbl_core.metrics import evaluate_predictions
from exbl_core.model import build_model
from exbl_core.synthetic import generate_split, oracle_config
from exbl_core.training import choose_device, fit
from exbl_core.weights import load_backbone
from experiments.cam_layers import ap_other, layer_scores
from experiments.shortcut_map import shortcut_map


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--viral", type=float, default=1.0)
    p.add_argument("--contrast", type=float, default=1.0)
    p.add_argument("--sides", choices=("both", "one"), default="both", help="humerus heads that carry child anatomy")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--shift", type=float, default=0.0)
    p.add_argument("--flip", action="store_true")
    p.add_argument("--hide", type=float, default=0.0, help="hide-and-seek: chance that each grid cell of a training image is hidden")
    p.add_argument("--hide-patch", type=int, default=32, help="hide-and-seek grid cell in pixels")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-stride", type=int, default=32, choices=(16, 32))
    p.add_argument("--weights", help="start the backbone from this weights file (features[:6] frozen, as for every loaded backbone)")
    p.add_argument("--oracle", action="store_true")
    p.add_argument(
        "--cam-layers",
        type=int,
        nargs="+",
        help="also child CP and AP for GradCAM at these layers of model.features (experiments.cam_layers)",
    )
    p.add_argument("--save", help="save the model's state dict here")
    p.add_argument("--out", help="append the JSON line to this file")
    args = p.parse_args()
    if args.save and Path(args.save).exists():
        p.error(f"{args.save} already exists; choose a new file (this script never replaces a file)")

    started = time.perf_counter()
    data_cfg = replace(
        config.DEMO.data,
        viral_strength=args.viral,
        confounder_contrast=args.contrast,
        confounder_sides=args.sides,
        size=args.size,
        n_train=args.n_train,
        seed=args.seed,
    )
    train_cfg = replace(
        config.DEMO.train,
        epochs=args.epochs,
        lr=args.lr,
        shift=args.shift,
        flip=args.flip,
        hide=args.hide,
        hide_patch=args.hide_patch,
        seed=args.seed,
    )
    fit_cfg = oracle_config(data_cfg) if args.oracle else data_cfg
    train, val = generate_split("train", fit_cfg), generate_split("val", fit_cfg)
    torch.manual_seed(args.seed)
    device = choose_device()
    backbone = None if args.weights is None else load_backbone(args.weights)[0]
    model = build_model(backbone=backbone, output_stride=args.output_stride)
    result = fit(model, train, val, train_cfg, device=device)
    model = model.cpu().eval()
    out = {"args": vars(args), "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    splits = {name: generate_split(name, data_cfg) for name in ("test", "shortcut_test")}
    for split, s in splits.items():
        probs, cams = predict_with_cams(model, s.float_images())
        report = evaluate_predictions(s.labels, probs.argmax(1), cams, s.masks, 5.0, s.regions, s.child)
        out[split] = {k: report[k] for k in ("accuracy", "activation_precision", "ap_by_class", "child_cp", "n_child_vp", "recall")}
        if split == "shortcut_test":
            diff = shortcut_map(model, s.float_images(), s.child.bool(), VIRAL_PNEUMONIA)["difference"]
            out["map"] = [[round(v, 2) for v in row] for row in diff.tolist()]
    out["gap"] = out["test"]["accuracy"] - out["shortcut_test"]["accuracy"]
    out["ap_other"] = ap_other(out["test"]["ap_by_class"])
    if args.cam_layers:
        out["cam_layers"] = layer_scores(model, splits["test"], splits["shortcut_test"], args.cam_layers)
    out["seconds"] = time.perf_counter() - started
    line = json.dumps(out)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    if args.save:
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write_bytes(args.save, buf.getvalue())


if __name__ == "__main__":
    main()
