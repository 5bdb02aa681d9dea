"""The workflow's commands: demo, train, oracle, pick, refine, evaluate, figure and study.

Every option is checked against its setting's rule before anything is read or written,
and a step runs under its run folder's lock.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from exbl_core import assets, config, errors, pipeline, run_data, run_models, runs, study, weights
from exbl_core.cli.progress import ProgressPrinter, print_pick, print_results, say
from exbl_core.figures import model_label
from exbl_core.methods import METHODS
from exbl_core.training import choose_device


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


def _settings(args: argparse.Namespace, run: runs.Run | None) -> tuple[config.DataSpec, config.TrainConfig, config.RefineConfig]:
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
    say(f"eXBL demo on {'the data set in ' + str(args.data) if args.data else 'synthetic chest X-ray phantoms'}, device {device}")
    shipped = _shipped_example(args, prepared)
    with _starting(args.out, prepared, replacing_run) as (run, data):
        say("Data: " + ", ".join(f"{k} {len(v)}" for k, v in data.items()))
        if shipped:
            assets.install(run)
            measured = ", with their measured metrics" if assets.brings_metrics(shipped, run) else ""
            say(f"Models: unrefined and oracle from {assets.describe(shipped)}{measured}; --from-scratch trains them instead")
        for step in () if shipped else ("train", "oracle") if preset.oracle else ("train",):
            _run_step(step, args, run, data, device)
        _run_step("pick", args, run, data, device)
        for method in preset.methods:
            args.method = method
            _run_step("refine", args, run, data, device)
        for step in ("evaluate", "figure"):
            _run_step(step, args, run, data, device)
    say(f"Demo finished in {time.perf_counter() - started:.0f} s.")
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


def cmd_study(args: argparse.Namespace) -> int:
    preset = _presets(args)
    methods = args.methods or list(METHODS)
    preset_name = "quick" if args.quick else "demo"
    study.check_request(args.out, args.seeds, methods)  # refusals come before any output, and touch nothing
    study.check_resume(args.out, study.study_settings(preset_name, preset, methods, args.pick_from))
    device = choose_device()
    say(
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
    say("\n" + study.study_markdown(rows))
    say(f"Wrote {args.out / study.STUDY_JSON}, {study.STUDY_MD} and {study.STUDY_PNG}; each seed's run is in {args.out}/seed-N")
    return 0


def _run_step(step: str, args: argparse.Namespace, run: runs.Run, data: dict, device) -> int:
    cancel = threading.Event()
    if step == "train":
        start = run_models.start_weights(run)
        if start is not None:
            say(f"Model: starts from {weights.describe(start)}")
        result = pipeline.train_step(run, data, device, ProgressPrinter(), cancel)
        say(f"Unrefined model: best epoch {result.best_epoch} of {result.epochs_run} -> {run.file(runs.UNREFINED)}")
    elif step == "pick":
        print_pick(pipeline.pick_step(run, data, device, args.good, args.bad, explainer=args.pick_from))
    elif step == "oracle":
        result = pipeline.train_step(run, data, device, ProgressPrinter(), cancel, role="oracle")
        say(f"Oracle: best epoch {result.best_epoch} of {result.epochs_run} -> {run.file(runs.ORACLE)}")
    elif step == "refine":
        say(f"Refining with {model_label(args.method)} ({METHODS[args.method].summary})")
        result = pipeline.refine_step(run, data, device, ProgressPrinter(), cancel, _refine_overrides(args))
        method = run_data.train_config(run, "refine").method
        target = run.file(run_models.model_file(method))
        say(f"{model_label(method)} model: best epoch {result.best_epoch} of {result.epochs_run} -> {target}")
    elif step == "evaluate":
        print_results(run, pipeline.evaluate_step(run, data, device))
    elif step == "figure":
        pipeline.figure_step(run, data, device, args.rows)
        say(f"Wrote {run.file(runs.FIGURE3)} and {run.file(runs.TABLE1_CSV)}")
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
                raise errors.RunError(
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
        if args.command == "figure" and not run_models.refined(run):
            raise errors.RunError(f"{run.path}: nothing to figure yet (no refined model); run refine first")
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
