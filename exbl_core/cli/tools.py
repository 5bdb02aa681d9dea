"""The commands beside the workflow's steps: explain a run's models, the shipped example, weights, lung masks, the real sample."""

from __future__ import annotations

import argparse
import sys
import time

import torch
from tqdm import tqdm

from exbl_core import assets, explainers, faithfulness, files, gallery, masks, real_sample, run_data, run_models, runs, segmenter, weights
from exbl_core.cli.progress import ProgressPrinter, say
from exbl_core.data import CLASSES, load_gallery
from exbl_core.figures import cam_grid, figure_png, model_label
from exbl_core.training import choose_device


def cmd_assets(args: argparse.Namespace) -> int:
    """Make the shipped example (build), verify it by hash and by re-measuring on regenerated phantoms (check),
    or measure its metrics.json again (evaluate)."""
    folder = args.dir or assets.ASSETS_DIR
    if args.action == "evaluate":
        manifest = assets.evaluate(folder, say)
        say(f"Wrote {folder / runs.METRICS} in {manifest['metrics']['seconds']:.0f} s, and its SHA-256 to {assets.MANIFEST}")
        return 0
    if args.action == "build":
        assets.check_target(folder, args.overwrite)
        say(f"Building the shipped example in {folder}: the default demo's unrefined model and oracle, on the CPU")
        manifest = assets.build(folder, args.overwrite, ProgressPrinter(), say)
        for entry in manifest["files"].values():
            say(f"  {entry['file']}: {entry['bytes'] / 2**20:.1f} MiB, best epoch {entry['best_epoch']}, SHA-256 {entry['sha256']}")
        measured = manifest["figures"]
        say(f"Wrote {folder / assets.MANIFEST} in {manifest['seconds']:.0f} s")
    else:
        measured = assets.check(folder)
    for role, fig in measured.items():
        say(
            f"  {role}: test accuracy {fig['test_accuracy']:.4f}, shortcut-test accuracy {fig['shortcut_test_accuracy']:.4f}, "
            f"shortcut gap {fig['shortcut_gap']:+.4f}"
        )
    if args.action == "check":
        say(f"{folder}: intact (SHA-256 and figures match {assets.MANIFEST}, within {assets.TOLERANCE}; {runs.METRICS} is current)")
    return 0


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
    files.atomic_write_bytes(args.out, figure_png(gallery.figure(model, found, args.images, chosen)))
    say(f"Wrote {args.out}: {len(args.images)} images of {args.data}, {model_label(args.model)} model (off its domain there)")
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
    files.atomic_write_bytes(args.out, figure_png(cam_grid(x, maps, titles, labels)))
    say(f"Wrote {args.out}: {len(args.images)} {args.split} images, {model_label(args.model)} model, " + ", ".join(e.label for e in chosen))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    """Say whether torchvision's ImageNet file is cached; with --download, fetch it (the only download there is)."""
    path = weights.imagenet_file()
    if weights.imagenet_cached():
        start = weights.resolve(weights.IMAGENET, real_data=True)  # checks the file: a broken one exits 2
        say(f"ImageNet weights ({weights.IMAGENET_NAME}): cached at {path} (SHA-256 {start.weights_sha256})")
        return 0
    if not args.download:
        say(
            f"ImageNet weights ({weights.IMAGENET_NAME}): not cached; expected at {path}. "
            f"Run '{weights.DOWNLOAD_COMMAND}' to fetch them (about 14 MB), or put torchvision's file there by hand."
        )
        return 0
    say(f"Downloading {weights.IMAGENET_URL}\n  to {path}")
    weights.download_imagenet(progress=True)
    start = weights.resolve(weights.IMAGENET, real_data=True)
    say(f"Saved {path} (SHA-256 {start.weights_sha256}, checked). Real-data runs now start from it by default.")
    return 0


def cmd_masks(args: argparse.Namespace) -> int:
    """Write a lung mask for every image of a data set folder that has none; never replaces one."""
    if not 64 <= args.size <= 1024 or args.size % 32:
        raise ValueError(f"--size {args.size}: must be a multiple of 32 from 64 to 1024")
    if args.batch < 1:
        raise ValueError(f"--batch {args.batch}: must be at least 1")
    images, total = masks.without_masks(args.data)
    if not images:
        say(f"{args.data}: all {total} images have lung masks; nothing written")
        return 0
    todo = masks.load_images(images, args.size)  # every image read before anything is loaded or written
    model = segmenter.load_segmenter()
    bf16 = args.precision == "bf16" or (args.precision == "auto" and segmenter.bf16_native())
    started = time.perf_counter()
    with tqdm(total=len(todo), desc="lung masks", unit="image", file=sys.stderr) as bar:
        written, empty = masks.write_masks(model, todo, args.batch, bf16, bar.update)
    seconds = time.perf_counter() - started
    per_image = f"{seconds / len(todo):.2f} s per image at {args.size} px, {'bf16' if bf16 else 'fp32'}"
    say(f"Wrote {len(written)} lung masks in {seconds:.1f} s ({per_image}); {total - len(images)} were already there")
    for image in empty:
        say(f"  no lung found in {image}: left without a mask")
    return 0


def cmd_real_sample(args: argparse.Namespace) -> int:
    """Fetch, check and extract the real sample and the segmenter (a set-up step: `make real-sample`)."""
    real_sample.build(args.out.expanduser().resolve(), say=say)
    return 0
