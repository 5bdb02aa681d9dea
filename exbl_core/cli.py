"""Command-line interface: ``python -m exbl_core {demo,train,oracle,pick,refine,evaluate,figure,study,weights}``."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from exbl_core import pipeline, runs, study, weights
from exbl_core.data import DataError
from exbl_core.figures import model_label, table1_markdown
from exbl_core.losses import DISTANCES, EXPLANATIONS
from exbl_core.methods import METHODS
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
    for which, gap in metrics.get("shortcut_gap", {}).items():
        _say(
            f"Shortcut gap, {model_label(which)}: test accuracy minus shortcut-test accuracy = {gap['accuracy_gap']:+.3f}; "
            f"Viral Pneumonia recall {gap['vp_recall_confounded']:.2f} -> {gap['vp_recall_shortcut_test']:.2f}"
        )
    for which, verdict in metrics.get("verdicts", {}).items():
        _say(f"Verdict, {model_label(which)}: {verdict['label'].upper()}: {verdict['sentence']}")
    _say(f"\nResults in {run.path}/: metrics.json, figure3.png, table1.csv, table1.md, exemplars.png")


def _refine_overrides(args: argparse.Namespace) -> dict:
    fields = ("method", "epochs", "lr", "lambda_expl", "margin", "distance", "explanation", "patience")
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
    steps = ["train", "oracle"] if preset.oracle else ["train"]
    steps += ["pick", *(("refine", m) for m in preset.methods), "evaluate", "figure"]
    for step in steps:
        if isinstance(step, tuple):
            args.method = step[1]
            step = step[0]
        if _run_step(step, args, run, data, device) != 0:
            return 1
    _say(f"Demo finished in {time.perf_counter() - started:.0f} s.")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    preset = _presets(args)
    methods = args.methods or list(METHODS)
    device = choose_device()
    _say(f"Study: seeds {' '.join(map(str, args.seeds))}; methods {' '.join(methods)}; device {device}; folder {args.out}")
    bar = tqdm(total=len(args.seeds), desc="seeds", file=sys.stderr)

    def progress(message: str) -> None:
        bar.set_postfix_str(message)
        tqdm.write(message)

    rows = study.run_study(args.out, args.seeds, methods, preset, device, progress, on_seed=lambda _seed: bar.update(1))
    bar.close()
    _say("\n" + study.study_markdown(rows, args.seeds))
    _say(f"Wrote {args.out / study.STUDY_JSON}, {study.STUDY_MD} and {study.STUDY_PNG}; each seed's run is in {args.out}/seed-N")
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
    elif step == "oracle":
        result = pipeline.train_step(run, data, device, ProgressPrinter(), cancel, role="oracle")
        _say(f"Oracle: best epoch {result.best_epoch} of {result.epochs_run} -> {run.file(runs.ORACLE)}")
    elif step == "refine":
        result = pipeline.refine_step(run, data, device, ProgressPrinter(), cancel, _refine_overrides(args))
        method = pipeline.train_config(run, "refine").method
        target = run.file(pipeline.model_file(method))
        _say(f"{model_label(method)} model: best epoch {result.best_epoch} of {result.epochs_run} -> {target}")
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
        p.add_argument(
            "--method",
            choices=list(METHODS),
            help="refinement method (default exbl, the paper's): "
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

    demo = sub.add_parser("demo", help="run the whole workflow with defaults (about 4 minutes on 2 CPU cores)")
    demo.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"run folder to write (default: {DEFAULT_OUT}); replaced if it exists")
    demo.add_argument("--quick", action="store_true", help="tiny data and few epochs: a smoke test in under a minute")
    data_options(demo)
    weights_option(demo)
    pick_options(demo)
    demo.add_argument("--rows", type=int, nargs="+", help="test-image indices for figure3.png (default: 4 Viral Pneumonia images)")
    demo.set_defaults(
        func=cmd_demo, method=None, epochs=None, lr=None, lambda_expl=None, margin=None, distance=None, explanation=None, patience=None
    )

    st = sub.add_parser("study", help="every method on the same unrefined models over several seeds: medians and spreads")
    st.add_argument("--out", type=Path, required=True, help="study folder (created; an interrupted study resumes in it)")
    st.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
    st.add_argument("--methods", nargs="+", help=f"methods to compare (default: all: {' '.join(METHODS)})")
    st.add_argument("--quick", action="store_true", help="tiny data and few epochs: checks the study's files in seconds")
    st.set_defaults(func=cmd_study, data=None, seed=0)

    helps = {
        "train": "train the unrefined model (creates the run folder if needed)",
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
