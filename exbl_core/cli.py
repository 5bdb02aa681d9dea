"""Command-line interface: ``python -m exbl_core {demo,train,oracle,pick,refine,evaluate,figure,explain,study,weights,assets}``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from exbl_core import (
    assets,
    config,
    explainers,
    faithfulness,
    gallery,
    masks,
    pipeline,
    real_sample,
    results,
    run_data,
    run_models,
    runs,
    segmenter,
    study,
    weights,
)
from exbl_core.data import CLASSES, DataError, load_gallery
from exbl_core.events import Event
from exbl_core.explainers import occlusion
from exbl_core.figures import cam_grid, figure_png, model_label, table1_markdown
from exbl_core.losses import DISTANCES, EXPLANATIONS
from exbl_core.methods import METHODS
from exbl_core.training import Interrupted, TrainConfig, TrainingError, choose_device

DEFAULT_OUT = Path("runs") / "demo"


class ProgressPrinter:
    """Turns training events into a tqdm bar per epoch and one summary line per epoch."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, event: Event) -> None:
        kind = event["type"]
        if kind == "batch_end":
            if self.bar is None:
                self.bar = tqdm(total=event["batches"], desc=f"{event['phase']} epoch {event['epoch']}", leave=False, file=sys.stderr)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event['loss']:.3f}")
            return
        self._close()
        if kind == "epoch_end":
            # Only a term that can be satisfied sample by sample (the triplet hinge) reports its active share.
            extra = f" expl {event['expl']:.3f}" if "expl" in event else ""
            extra += f" active {event['active_triplets']:.0%}" if "active_triplets" in event else ""
            tqdm.write(
                f"{event['phase']} epoch {event['epoch']:>3}/{event['epochs']}: loss {event['loss']:.3f} (CE {event['ce']:.3f}{extra})"
                f" | val loss {event['val_loss']:.3f} acc {event['val_accuracy']:.3f} AP {event['val_ap']:.3f}"
                f" | {event['seconds']:.1f}s{' *best' if event['best'] else ''}"
            )
        elif kind == "early_stop":
            tqdm.write(f"{event['phase']}: early stop at epoch {event['epoch']}; best epoch {event['best_epoch']} restored")
        elif kind in ("cancelled", "failed"):
            kept = event.get("kept_message") or f"last good checkpoint is from epoch {event['best_epoch']}"
            tqdm.write(f"{event['phase']}: {kind} at epoch {event['epoch']}; {kept}")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _say(msg: str) -> None:
    print(msg, flush=True)


def _print_pick(pick: dict) -> None:
    _say(f"Exemplars ({pick['rule']}):")
    for side in ("good", "bad"):
        p = pick[side]
        share = pick.get("found", {}).get(f"{side}_lung_share")
        seen = "" if share is None else f"; {share:.2f} of its occlusion map on the lungs"
        _say(f"  {side:>4}: training image {p['index']} ({p['class']}, predicted {p['predicted']}), GradCAM AP {p['ap']:.3f}{seen}")


def _print_results(run: runs.Run, metrics: dict) -> None:
    _say("\nTable 1\n" + table1_markdown(results.table1(run, metrics), results.table1_note(run, metrics)))
    for which, gap in metrics.get("shortcut_gap", {}).items():
        _say(
            f"Shortcut gap, {model_label(which)}: test accuracy minus shortcut-test accuracy = {gap['accuracy_gap']:+.3f}; "
            f"Viral Pneumonia recall {gap['vp_recall_confounded']:.2f} -> {gap['vp_recall_shortcut_test']:.2f}"
        )
    for which, verdict in metrics.get("verdicts", {}).items():
        _say(f"Verdict, {model_label(which)}: {verdict['label'].upper()}: {verdict['sentence']}")
    _say(f"\nWrote {run.file(runs.METRICS)}")


def _refine_overrides(args: argparse.Namespace) -> dict:
    fields = ("method", "epochs", "lr", "lambda_expl", "margin", "distance", "explanation", "patience")
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


def check_options(args: argparse.Namespace) -> None:
    """Refuse an option outside its setting's rule (``config.refused``) with one line naming it, before anything happens."""
    for name in config.RULES:
        value = getattr(args, name, None)
        rule = None if value is None else config.refused(name, value)
        if rule is not None:
            shown = " ".join(map(str, value)) if isinstance(value, list | tuple) else value
            raise ValueError(f"--{name.replace('_', '-')} {shown}: {rule}")


def _presets(args: argparse.Namespace) -> config.Preset:
    return config.preset(quick=getattr(args, "quick", False), real_data=args.data is not None)


def _settings(args: argparse.Namespace, run: runs.Run | None) -> tuple[config.DataSpec, TrainConfig, TrainConfig]:
    """Data, training and refinement settings: the run's (the presets' for a new run or with
    --quick), with every option given on the command line applied on top: a given option wins."""
    preset = _presets(args)
    if run is None or args.quick:
        data, train, refine = preset.data, preset.train, preset.refine
    else:
        data, train, refine = run_data.data_config(run), run_data.train_config(run, "train"), run_data.train_config(run, "refine")
    if args.data is not None:
        path = str(args.data.expanduser().resolve())
        data = replace(data, path=path) if isinstance(data, config.FolderSpec) else config.FolderSpec(path)
    if args.skip_bad and not isinstance(data, config.FolderSpec):
        raise ValueError("--skip-bad applies to a data set folder: give --data too")
    given = {"size": args.size, "seed": args.seed, "skip_bad": args.skip_bad or None}
    if args.per_class is not None:
        names = ("train", "val", "test") if isinstance(data, config.FolderSpec) else ("n_train", "n_val", "n_test")
        given.update(zip(names, args.per_class, strict=True))
    data = replace(data, **{k: v for k, v in given.items() if v is not None})
    if getattr(args, "epochs", None) is not None:
        train = replace(train, epochs=args.epochs)
    if args.seed is not None:
        train, refine = replace(train, seed=args.seed), replace(refine, seed=args.seed)
    return data, train, refine


@contextlib.contextmanager
def _starting(out: Path, prepared: run_data.PreparedRun, replacing_run: bool) -> Iterator[tuple[runs.Run, dict]]:
    """Write a prepared run under its lock; an old run there is kept aside until the new model finishes."""
    with runs.locked(out, create=True), runs.replacing(out) if replacing_run else contextlib.nullcontext():
        run = run_data.write_run(out, prepared)
        yield run, prepared.data or run_data.load_data(run)


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_options(args)
    replacing_run = runs.check_target(args.out, overwrite=args.overwrite)
    preset = _presets(args)
    prepared = run_data.prepare_run(*_settings(args, None), args.weights)
    device = choose_device()
    _say(f"eXBL demo on {'the data set in ' + str(args.data) if args.data else 'synthetic chest X-ray phantoms'}, device {device}")
    shipped = _shipped_example(args, prepared)
    with _starting(args.out, prepared, replacing_run) as (run, data):
        _say("Data: " + ", ".join(f"{k} {len(v)}" for k, v in data.items()))
        if shipped:
            assets.install(run)
            _say(f"Models: unrefined and oracle from {assets.describe(shipped)}; --from-scratch trains them instead")
        for step in () if shipped else ("train", "oracle") if preset.oracle else ("train",):
            _run_step(step, args, run, data, device)
        _run_step("pick", args, run, data, device)
        for method in preset.methods:
            args.method = method
            _run_step("refine", args, run, data, device)
        for step in ("evaluate", "figure"):
            _run_step(step, args, run, data, device)
    _say(f"Demo finished in {time.perf_counter() - started:.0f} s.")
    return 0


def _shipped_example(args: argparse.Namespace, prepared: run_data.PreparedRun) -> dict | None:
    """The shipped example's manifest when the demo may start from it (its settings, assets intact, no --from-scratch).

    An altered or missing asset is no reason to stop the demo: one line says so and the models are trained.
    """
    if args.from_scratch or not assets.matches(prepared.config):
        return None
    try:
        return assets.verify()
    except assets.AssetError as exc:
        print(f"notice: {exc}; training from scratch instead", file=sys.stderr, flush=True)
        return None


def cmd_assets(args: argparse.Namespace) -> int:
    """Make the shipped example (build), or verify it by hash and by re-measuring on regenerated phantoms (check)."""
    folder = args.dir or assets.ASSETS_DIR
    if args.action == "build":
        assets.check_target(folder, args.overwrite)
        _say(f"Building the shipped example in {folder}: the default demo's unrefined model and oracle, on the CPU")
        manifest = assets.build(folder, args.overwrite, ProgressPrinter(), _say)
        for entry in manifest["files"].values():
            _say(f"  {entry['file']}: {entry['bytes'] / 2**20:.1f} MiB, best epoch {entry['best_epoch']}, SHA-256 {entry['sha256']}")
        measured = manifest["figures"]
        _say(f"Wrote {folder / assets.MANIFEST} in {manifest['seconds']:.0f} s")
    else:
        measured = assets.check(folder)
    for role, fig in measured.items():
        _say(
            f"  {role}: test accuracy {fig['test_accuracy']:.4f}, shortcut-test accuracy {fig['shortcut_test_accuracy']:.4f}, "
            f"shortcut gap {fig['shortcut_gap']:+.4f}"
        )
    if args.action == "check":
        _say(f"{folder}: intact (SHA-256 and figures match {assets.MANIFEST}, within {assets.TOLERANCE})")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    preset = _presets(args)
    methods = args.methods or list(METHODS)
    preset_name = "quick" if args.quick else "demo"
    study.check_request(args.out, args.seeds, methods)  # refusals come before any output, and touch nothing
    study.check_resume(args.out, study.study_settings(preset_name, preset, methods, args.pick_from))
    device = choose_device()
    _say(
        f"Study: seeds {' '.join(map(str, args.seeds))}; methods {' '.join(methods)}; pair picked on {args.pick_from} maps; "
        f"device {device}; folder {args.out}"
    )
    bar = tqdm(total=len(args.seeds), desc="seeds", file=sys.stderr)

    def progress(message: str) -> None:
        bar.set_postfix_str(message)
        tqdm.write(message)

    rows = study.run_study(
        args.out, args.seeds, methods, preset, device, progress, lambda _seed: bar.update(1), preset_name, args.pick_from
    )
    bar.close()
    _say("\n" + study.study_markdown(rows))
    _say(f"Wrote {args.out / study.STUDY_JSON}, {study.STUDY_MD} and {study.STUDY_PNG}; each seed's run is in {args.out}/seed-N")
    return 0


def _run_step(step: str, args: argparse.Namespace, run: runs.Run, data: dict, device) -> int:
    cancel = threading.Event()
    if step == "train":
        start = run_models.start_weights(run)
        if start is not None:
            _say(f"Model: starts from {weights.describe(start)}")
        result = pipeline.train_step(run, data, device, ProgressPrinter(), cancel)
        _say(f"Unrefined model: best epoch {result.best_epoch} of {result.epochs_run} -> {run.file(runs.UNREFINED)}")
    elif step == "pick":
        _print_pick(pipeline.pick_step(run, data, device, args.good, args.bad, explainer=args.pick_from))
    elif step == "oracle":
        result = pipeline.train_step(run, data, device, ProgressPrinter(), cancel, role="oracle")
        _say(f"Oracle: best epoch {result.best_epoch} of {result.epochs_run} -> {run.file(runs.ORACLE)}")
    elif step == "refine":
        _say(f"Refining with {model_label(args.method)} ({METHODS[args.method].summary})")
        result = pipeline.refine_step(run, data, device, ProgressPrinter(), cancel, _refine_overrides(args))
        method = run_data.train_config(run, "refine").method
        target = run.file(run_models.model_file(method))
        _say(f"{model_label(method)} model: best epoch {result.best_epoch} of {result.epochs_run} -> {target}")
    elif step == "evaluate":
        _print_results(run, pipeline.evaluate_step(run, data, device))
    elif step == "figure":
        pipeline.figure_step(run, data, device, args.rows)
        _say(f"Wrote {run.file(runs.FIGURE3)} and {run.file(runs.TABLE1_CSV)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train in a new run folder, or in a run that has no model yet; --overwrite starts a run over."""
    check_options(args)
    existing = runs.check_target(args.run, overwrite=True)
    device = choose_device()
    if existing and not args.overwrite:
        with runs.locked(args.run):
            run = run_data.check_config(runs.open_run(args.run))
            if args.weights is not None:
                _check_same_start(run, args.weights)
            if run.has(runs.UNREFINED):
                raise runs.RunError(
                    f"{run.path}: already has a trained model ({runs.UNREFINED}); pass --overwrite to train a new one "
                    "(the old run is kept until the new model finishes), or choose another --run"
                )
            settings = _settings(args, run)
            if settings == (run_data.data_config(run), run_data.train_config(run, "train"), run_data.train_config(run, "refine")):
                return _run_step("train", args, run, run_data.load_data(run), device)
            # A setting given now wins: the run starts over with it, and its files come back if this attempt fails.
            prepared = run_data.prepare_run(*settings, args.weights)
            with _starting(run.path, prepared, replacing_run=True) as (run, data):
                return _run_step("train", args, run, data, device)
    prepared = run_data.prepare_run(*_settings(args, None), args.weights)
    with _starting(args.run, prepared, existing) as (run, data):
        return _run_step("train", args, run, data, device)


def cmd_step(args: argparse.Namespace) -> int:
    check_options(args)
    runs.open_run(args.run)  # before the lock, whose file may only ever go into a run folder
    device = choose_device()
    with runs.locked(args.run):
        run = run_data.check_config(runs.open_run(args.run))
        pipeline.check_ready(run, args.command)
        if args.command == "figure" and not run.refined():
            raise runs.RunError(f"{run.path}: nothing to figure yet (no refined model); run refine first")
        if args.command == "refine":
            run_data.refine_settings(run, _refine_overrides(args))
        if getattr(args, "weights", None) is not None:
            _check_same_start(run, args.weights)
        return _run_step(args.command, args, run, run_data.load_data(run), device)


def _check_same_start(run: runs.Run, choice: str) -> None:
    """Refuse ``--weights`` that differ from what an existing run was created with: a run records one start."""
    recorded = run_models.start_weights(run)
    wanted = weights.resolve(choice, real_data=isinstance(run_data.data_config(run), config.FolderSpec))
    if recorded is not None and recorded != wanted:
        raise ValueError(
            f"{run.path} was created to start from {weights.describe(recorded)}; "
            f"--weights {choice} needs a new run folder (choose another --run)"
        )


def _infill(text: str) -> float | str:
    """``--infill``: ``mean`` or a number (checked against [0, 1] by the explainer, with one line naming it)."""
    try:
        return text if text == "mean" else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'mean' nor a number") from None


def _explain_gallery(args: argparse.Namespace, run: runs.Run, chosen: list) -> int:
    """explain --data: real radiographs of any classes, lungs outlined, maps and both shoulders; for looking only."""
    size = run_data.data_config(run).size
    for explainer in chosen:
        explainer.check(size)
    found = load_gallery(args.data, size)
    outside = [i for i in args.images if not 0 <= i < len(found)]
    if outside:
        raise ValueError(f"--images {outside[0]}: {args.data} has images 0 to {len(found) - 1}")
    unmasked = [i for i in args.images if not bool(found.has_mask[i])]
    if unmasked:
        raise ValueError(f"{found.paths[unmasked[0]]}: has no lung mask; run 'python -m exbl_core masks --data {args.data}' first")
    model = run_models.load_model(run, args.model, choose_device())
    runs.atomic_write_bytes(args.out, figure_png(gallery.figure(model, found, args.images, chosen)))
    _say(f"Wrote {args.out}: {len(args.images)} images of {args.data}, {model_label(args.model)} model (off its domain there)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Write a PNG of chosen images with each explainer's map, for any model of a run; never replaces a file."""
    settings = {k: getattr(args, k) for k in ("patch", "stride", "infill") if getattr(args, k) is not None}
    chosen = [explainers.get(name, **(settings if name == "occlusion" else {})) for name in args.explainers]
    if settings and "occlusion" not in args.explainers:
        raise ValueError("--patch, --stride and --infill are occlusion settings: add occlusion to --explainers")
    if args.out.exists():
        raise ValueError(f"{args.out}: exists; choose another --out (explain never replaces a file)")
    run = run_data.check_config(runs.open_run(args.run))
    if args.data is not None:
        return _explain_gallery(args, run, chosen)
    if args.split not in run_data.split_names(run):
        raise ValueError(f"--split {args.split}: this run has {', '.join(run_data.split_names(run))}")
    for explainer in chosen:
        explainer.check(run_data.data_config(run).size)
    split = run_data.load_split(run, args.split)
    outside = [i for i in args.images if not 0 <= i < len(split)]
    if outside:
        raise ValueError(f"--images {outside[0]}: the {args.split} split has images 0 to {len(split) - 1}")
    model = run_models.load_model(run, args.model, choose_device())
    x = split.float_images(torch.tensor(args.images))
    preds = faithfulness.predicted(model, x)
    maps = [explainers.for_display(e.maps(model, x, preds)) for e in chosen]
    titles = ("Input", *(t for e in chosen for t in (e.label, f"{e.label} overlay")))
    labels = [f"#{i} true {CLASSES[int(split.labels[i])]}\npredicted {CLASSES[int(p)]}" for i, p in zip(args.images, preds, strict=True)]
    runs.atomic_write_bytes(args.out, figure_png(cam_grid(x, maps, titles, labels)))
    _say(
        f"Wrote {args.out}: {len(args.images)} {args.split} images, {model_label(args.model)} model, " + ", ".join(e.label for e in chosen)
    )
    return 0


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


def cmd_masks(args: argparse.Namespace) -> int:
    """Write a lung mask for every image of a data set folder that has none; never replaces one."""
    if not 64 <= args.size <= 1024 or args.size % 32:
        raise ValueError(f"--size {args.size}: must be a multiple of 32 from 64 to 1024")
    if args.batch < 1:
        raise ValueError(f"--batch {args.batch}: must be at least 1")
    images, total = masks.without_masks(args.data)
    if not images:
        _say(f"{args.data}: all {total} images have lung masks; nothing written")
        return 0
    todo = masks.load_images(images, args.size)  # every image read before anything is loaded or written
    model = segmenter.load_segmenter()
    bf16 = args.precision == "bf16" or (args.precision == "auto" and segmenter.bf16_native())
    started = time.perf_counter()
    with tqdm(total=len(todo), desc="lung masks", unit="image", file=sys.stderr) as bar:
        written, empty = masks.write_masks(model, todo, args.batch, bf16, bar.update)
    seconds = time.perf_counter() - started
    per_image = f"{seconds / len(todo):.2f} s per image at {args.size} px, {'bf16' if bf16 else 'fp32'}"
    _say(f"Wrote {len(written)} lung masks in {seconds:.1f} s ({per_image}); {total - len(images)} were already there")
    for image in empty:
        _say(f"  no lung found in {image}: left without a mask")
    return 0


def cmd_real_sample(args: argparse.Namespace) -> int:
    """Fetch, check and extract the real sample and the segmenter (a set-up step: `make real-sample`)."""
    real_sample.build(args.out.expanduser().resolve(), say=_say)
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
            "occlusion: least and most of the map on the lungs), and exemplars.json records them (default gradcam)",
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

    demo = sub.add_parser("demo", help="run the whole workflow with defaults (about 16 minutes on 2 CPU cores; --quick: under a minute)")
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

    a = sub.add_parser("assets", help="make (build) or verify (check) the shipped example in assets/: the default demo's models")
    a.add_argument("action", choices=("build", "check"), help="build: train and write them; check: hashes and re-measured figures")
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


def _interrupt(signum: int, _frame: object) -> None:
    """Turn SIGTERM into a KeyboardInterrupt, which training records and answers like SIGINT."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM takes SIGINT's path: the step records the interruption and says what it kept.

    Only the main thread may install a handler; elsewhere (a test calling ``main`` from a
    thread) SIGTERM keeps its default.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _printable_anywhere() -> None:
    """Escape what the console cannot encode instead of failing on it.

    With an ASCII-only console, printing a non-ASCII run path raised UnicodeEncodeError
    after the model had trained; the path is now printed with backslash escapes.
    """
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _printable_anywhere()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_interrupts():
            return args.func(args)
    except (DataError, runs.RunError, runs.CheckpointError, TrainingError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # A training step's Interrupted says what it kept; elsewhere nothing was being written.
        said = str(exc) if isinstance(exc, Interrupted) else "the files written before it are kept"
        print(f"interrupted: {said}", file=sys.stderr)
        return 130
