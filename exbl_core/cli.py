"""Command-line interface: ``python -m exbl_core {demo,train,pick,refine,evaluate,figure,weights}``."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from exbl_core import pipeline, runs, weights
from exbl_core.data import DataError
from exbl_core.figures import table1_markdown
from exbl_core.losses import DISTANCES, EXPLANATIONS
from exbl_core.training import TrainingError, choose_device

DEFAULT_OUT = Path("runs") / "demo"


class ProgressPrinter:
    """Turns training events into a tqdm bar per epoch and one summary line per epoch."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "batch_end":
            if self.bar is None:
                self.bar = tqdm(total=event["batches"], desc=f"{event['phase']} epoch {event['epoch']}", leave=False, file=sys.stderr)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event['loss']:.3f}")
            return
        self._close()
        if kind == "epoch_end":
            extra = f" expl {event['expl']:.3f} active {event['active_triplets']:.0%}" if "expl" in event else ""
            tqdm.write(
                f"{event['phase']} epoch {event['epoch']:>3}/{event['epochs']}: loss {event['loss']:.3f} (CE {event['ce']:.3f}{extra})"
                f" | val loss {event['val_loss']:.3f} acc {event['val_accuracy']:.3f} AP {event['val_ap']:.3f}"
                f" | {event['seconds']:.1f}s{' *best' if event['best'] else ''}"
            )
        elif kind == "early_stop":
            tqdm.write(f"{event['phase']}: early stop at epoch {event['epoch']}; best epoch {event['best_epoch']} restored")
        elif kind in ("cancelled", "failed"):
            tqdm.write(f"{event['phase']}: {kind} at epoch {event['epoch']}; last good checkpoint is from epoch {event['best_epoch']}")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _say(msg: str) -> None:
    print(msg, flush=True)


def _print_pick(pick: dict) -> None:
    _say(f"Exemplars ({pick['rule']}):")
    for role in ("good", "bad"):
        p = pick[role]
        _say(f"  {role:>4}: training image {p['index']} ({p['class']}, predicted {p['predicted']}), AP {p['ap']:.3f}")


def _print_results(run: runs.Run, metrics: dict) -> None:
    _say("\nTable 1\n" + table1_markdown(pipeline.table1(run, metrics), pipeline.table1_note(run)))
    for which in ("unrefined", "refined"):
        gap = metrics.get("shortcut_gap", {}).get(which)
        if gap:
            _say(
                f"Shortcut gap, {which}: test accuracy minus shortcut-test accuracy = {gap['accuracy_gap']:+.3f}; "
                f"Viral Pneumonia recall {gap['vp_recall_confounded']:.2f} -> {gap['vp_recall_shortcut_test']:.2f}"
            )
    _say(f"\nResults in {run.path}/: metrics.json, figure3.png, table1.csv, table1.md, exemplars.png")


def _refine_overrides(args: argparse.Namespace) -> dict:
    fields = ("epochs", "lr", "lambda_expl", "margin", "distance", "explanation", "patience")
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


def _data_spec(args: argparse.Namespace, preset: pipeline.Preset):
    if args.data:
        train, val, test = args.per_class
        return pipeline.FolderSpec(str(args.data), args.size or 224, train, val, test, args.seed, args.skip_bad)
    data = preset.data if args.size is None else replace(preset.data, size=args.size)
    return replace(data, seed=args.seed)


def _presets(args: argparse.Namespace) -> pipeline.Preset:
    preset = pipeline.QUICK if getattr(args, "quick", False) else pipeline.DEMO
    if args.data and not getattr(args, "quick", False):
        preset = replace(preset, train=pipeline.PAPER_TRAIN, refine=pipeline.PAPER_REFINE)
    return replace(preset, train=replace(preset.train, seed=args.seed), refine=replace(preset.refine, seed=args.seed))


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    preset = _presets(args)
    device = choose_device()
    _say(f"eXBL demo on {'the data set in ' + str(args.data) if args.data else 'synthetic chest X-ray phantoms'}, device {device}")
    run = pipeline.new_run(args.out, _data_spec(args, preset), preset.train, preset.refine, overwrite=True, start=args.weights)
    data = pipeline.load_data(run)
    _say("Data: " + ", ".join(f"{k} {len(v)}" for k, v in data.items()))
    for step in ("train", "pick", "refine", "evaluate", "figure"):
        if _run_step(step, args, run, data, device) != 0:
            return 1
    _say(f"Demo finished in {time.perf_counter() - started:.0f} s.")
    return 0


def _run_step(step: str, args: argparse.Namespace, run: runs.Run, data: dict, device) -> int:
    cancel = threading.Event()
    if step == "train":
        start = pipeline.start_weights(run)
        if start is not None:
            _say(f"Model: starts from {weights.describe(start)}")
        result = pipeline.train_step(run, data, device, ProgressPrinter(), cancel)
        _say(f"Unrefined model: best epoch {result.best_epoch} of {result.epochs_run} -> {run.file(runs.UNREFINED)}")
    elif step == "pick":
        _print_pick(pipeline.pick_step(run, data, device, args.good, args.bad))
    elif step == "refine":
        result = pipeline.refine_step(run, data, device, ProgressPrinter(), cancel, _refine_overrides(args))
        _say(f"eXBL model: best epoch {result.best_epoch} of {result.epochs_run} -> {run.file(runs.REFINED)}")
    elif step == "evaluate":
        _print_results(run, pipeline.evaluate_step(run, data, device))
    elif step == "figure":
        pipeline.figure_step(run, data, device, args.rows)
        _say(f"Wrote {run.file(runs.FIGURE3)} and {run.file(runs.TABLE1_CSV)}")
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    device = choose_device()
    if args.command == "train" and not runs.Run(Path(args.run)).has(runs.CONFIG):
        preset = _presets(args)
        train_cfg = preset.train if args.epochs is None else replace(preset.train, epochs=args.epochs)
        run = pipeline.new_run(args.run, _data_spec(args, preset), train_cfg, preset.refine, start=args.weights)
    else:
        run = runs.open_run(args.run)
        if getattr(args, "weights", None) is not None:
            _check_same_start(run, args.weights)
    data = pipeline.load_data(run)
    return _run_step(args.command, args, run, data, device)


def _check_same_start(run: runs.Run, choice: str) -> None:
    """Refuse ``--weights`` that differ from what an existing run was created with: a run records one start."""
    recorded = pipeline.start_weights(run)
    wanted = weights.resolve(choice, real_data=isinstance(pipeline.data_config(run), pipeline.FolderSpec))
    if recorded is not None and recorded != wanted:
        raise ValueError(
            f"{run.path} was created to start from {weights.describe(recorded)}; "
            f"--weights {choice} needs a new run folder (choose another --run)"
        )


def cmd_weights(args: argparse.Namespace) -> int:
    """Say whether torchvision's ImageNet file is cached; with --download, fetch it (the only download there is)."""
    path = weights.imagenet_file()
    if weights.imagenet_cached():
        start = weights.resolve(weights.IMAGENET, real_data=True)  # checks the file: a broken one exits 2
        _say(f"ImageNet weights ({weights.IMAGENET_NAME}): cached at {path} (SHA-256 {start.weights_sha256})")
        return 0
    if not args.download:
        _say(
            f"ImageNet weights ({weights.IMAGENET_NAME}): not cached; expected at {path}. "
            f"Run '{weights.DOWNLOAD_COMMAND}' to fetch them (about 14 MB), or put torchvision's file there by hand."
        )
        return 0
    _say(f"Downloading {weights.IMAGENET_URL}\n  to {path}")
    weights.download_imagenet(progress=True)
    start = weights.resolve(weights.IMAGENET, real_data=True)
    _say(f"Saved {path} (SHA-256 {start.weights_sha256}, checked). Real-data runs now start from it by default.")
    return 0


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
        p.add_argument("--seed", type=int, default=0, help="seed for data, split and training (default: 0)")
        p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and images without masks, and list them")
        p.add_argument(
            "--per-class",
            type=int,
            nargs=3,
            default=(800, 300, 200),
            metavar=("TRAIN", "VAL", "TEST"),
            help="with --data: images per class in each split (default: the paper's 800 300 200)",
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

    def refine_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=int, help="maximum refinement epochs")
        p.add_argument("--lr", type=float, help="refinement learning rate (paper: 1e-4)")
        p.add_argument("--lambda-expl", type=float, help="weight of the explanation loss (default 1.0)")
        p.add_argument("--margin", type=float, help="triplet margin (default 1.0)")
        p.add_argument("--distance", choices=DISTANCES, help="euclidean (the paper's) or normalized (unit-norm explanations)")
        p.add_argument(
            "--explanation",
            choices=EXPLANATIONS,
            help="gray_cam: E = image x GradCAM (the paper's); cam: E = GradCAM alone, which does not favour bright bone",
        )
        p.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 5)")

    demo = sub.add_parser("demo", help="run the whole workflow with defaults (about 4 minutes on 2 CPU cores)")
    demo.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"run folder to write (default: {DEFAULT_OUT}); replaced if it exists")
    demo.add_argument("--quick", action="store_true", help="tiny data and few epochs: a smoke test in under a minute")
    data_options(demo)
    weights_option(demo)
    pick_options(demo)
    demo.add_argument("--rows", type=int, nargs="+", help="test-image indices for figure3.png (default: 4 Viral Pneumonia images)")
    demo.set_defaults(func=cmd_demo, epochs=None, lr=None, lambda_expl=None, margin=None, distance=None, explanation=None, patience=None)

    helps = {
        "train": "train the unrefined model (creates the run folder if needed)",
        "pick": "choose the good and bad explanation (automatic unless --good/--bad)",
        "refine": "eXBL refinement of the unrefined model",
        "evaluate": "write metrics.json for both models",
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
        p.set_defaults(func=cmd_step)

    w = sub.add_parser("weights", help="say whether the ImageNet weights are cached; --download fetches them")
    w.add_argument(
        "--download",
        action="store_true",
        help="download torchvision's MobileNetV2 ImageNet file into the torch hub cache and check its SHA-256 "
        "(nothing else in the tool downloads anything)",
    )
    w.set_defaults(func=cmd_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, runs.RunError, runs.CheckpointError, TrainingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last good checkpoint is kept", file=sys.stderr)
        return 130
