"""Occlusion maps: ours against Captum's ``Occlusion`` on the same trained model, same settings.

    python -m bench.occlusion [--run DIR] [--size 128] [--images 4] [--repeats 5] [--threads N]
    python -m bench.occlusion --sweep RUN [--images 64]   # how the window and stride change the story
    python -m bench.occlusion --batches [--run DIR]       # occluded images per forward pass, side by side
    python -m bench.occlusion --evaluate RUN              # what scoring the explainers adds to `evaluate`
    python -m bench.occlusion --incremental [--run DIR]   # the most incremental inference could save
    python -m bench.occlusion --compilers [--run DIR]     # the folded network through TorchScript and torch.compile


Ours puts every occluded copy through the BatchNorm-folded network in large batches under
``no_grad`` and spreads the drops back with one ``F.fold``. Captum is timed twice: with its
default ``perturbations_per_eval=1`` (one forward pass per window, what a user gets by
default) and with every window of an image in one batch (its best case). The maps must
agree within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.common import Section, bench_parser, compare, ensure_trained_run, load_trained, synthetic_batch, table
from exbl_core import explainers
from exbl_core.explainers.occlusion import PATCH, STRIDE, infill_values, window_masks
from exbl_core.model import fold_batchnorm


def captum_maps(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, per_eval: int) -> torch.Tensor:
    from captum.attr import Occlusion

    occlusion = Occlusion(lambda t: model(t).softmax(1))
    return occlusion.attribute(
        x,
        sliding_window_shapes=(1, PATCH, PATCH),
        strides=(1, STRIDE, STRIDE),
        baselines=x.mean((1, 2, 3), keepdim=True),
        target=targets,
        perturbations_per_eval=per_eval,
    )[:, 0]


def trained_batch(run_dir, size: int, images: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A trained model, ``images`` phantoms at ``size`` px, and the model's predicted classes: what every timing explains."""
    model = load_trained(ensure_trained_run(run_dir))
    x, _, _ = synthetic_batch(size, images)
    with torch.no_grad():
        return model, x, model(x).argmax(1)


def run(run_dir=None, size: int = 128, images: int = 4, repeats: int = 5) -> Section:
    model, x, targets = trained_batch(run_dir, size, images)
    ours = explainers.get("occlusion")
    windows = len(window_masks((size, size), PATCH, STRIDE))
    reference = captum_maps(model, x, targets, windows)
    difference = float((ours.maps(model, x, targets) - reference).abs().max())
    timings = compare(
        {
            "ours": lambda: ours.maps(model, x, targets),
            "captum_all": lambda: captum_maps(model, x, targets, windows),
            "captum_default": lambda: captum_maps(model, x, targets, 1),
        },
        repeats=repeats,
    )
    per_map = {name: timings.best(name) / images for name in timings.seconds}
    rows = [
        ["ours: folded BatchNorm, every window batched, `no_grad`", f"{per_map['ours']:.3f}", "1.00"],
        [
            f"Captum `Occlusion`, `perturbations_per_eval={windows}`",
            f"{per_map['captum_all']:.3f}",
            timings.both("captum_all", "ours"),
        ],
        [
            "Captum `Occlusion`, default `perturbations_per_eval=1`",
            f"{per_map['captum_default']:.3f}",
            timings.both("captum_default", "ours"),
        ],
    ]
    markdown = (
        f"{images} phantoms at {size} px, {PATCH}-px window, stride {STRIDE} ({windows} windows), each image's mean as infill, "
        f"the trained checkpoint of `{run_dir or 'the cached quick demo'}`, {torch.get_num_threads()} torch threads, "
        f"{repeats} alternating repeats. "
        f"Largest difference between our maps and Captum's: {difference:.1e}.\n\n"
        + table(["method", "best s / map", "time vs ours (best, median)"], rows)
    )
    targets_met = [
        (
            f"one occlusion map at {size} px <= 0.3 s ({torch.get_num_threads()} threads)",
            f"{per_map['ours']:.3f} s",
            per_map["ours"] <= 0.3,
        ),
        ("occlusion equals Captum's (max abs difference <= 1e-4)", f"{difference:.1e}", difference <= 1e-4),
        (
            "occlusion >= 3x faster than Captum's default",
            f"{timings.ratio('captum_default', 'ours'):.1f}x",
            timings.ratio("captum_default", "ours") >= 3,
        ),
    ]
    return Section("Occlusion maps", markdown, targets_met, {"per_map": per_map, "difference": difference})


def compilers(run_dir, size: int = 128, images: int = 8, repeats: int = 3) -> Section:
    """Our maps with the folded network as it is, frozen by TorchScript (oneDNN fusion) and compiled by
    ``torch.compile`` (Inductor's C++ kernels): the first call (preparation included), time per map, and
    the largest difference from the eager maps.

    The explainer folds the model on every call; here its ``fold_batchnorm`` is pointed at the
    prepared network, so everything else stays the explainer's own code.
    """
    import time

    from exbl_core.explainers import occlusion

    model, x, targets = trained_batch(run_dir, size, images)
    batch = torch.rand(16, 1, size, size)
    prepare = {
        "eager": lambda: fold_batchnorm(model),
        "torchscript": lambda: torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(fold_batchnorm(model), batch).eval())),
        "compile": lambda: torch.compile(fold_batchnorm(model), dynamic=False),
    }
    ours, real = explainers.get("occlusion"), occlusion.fold_batchnorm
    prepared: dict[str, torch.nn.Module] = {}

    def maps_with(name: str):
        def run_maps():
            occlusion.fold_batchnorm = lambda _model: prepared[name]
            try:
                return ours.maps(model, x, targets)
            finally:
                occlusion.fold_batchnorm = real

        return run_maps

    first, found = {}, {}
    for name, make in prepare.items():
        start = time.perf_counter()
        with torch.no_grad():
            prepared[name] = make()
        found[name] = maps_with(name)()  # a compiler's kernels for every batch shape are made here
        first[name] = time.perf_counter() - start
    difference = {name: float((maps - found["eager"]).abs().max()) for name, maps in found.items()}
    timings = compare({name: maps_with(name) for name in prepare}, repeats=repeats)
    rows = [
        [name, f"{first[name]:.1f}", f"{timings.best(name) / images:.3f}", timings.both(name, "eager"), f"{difference[name]:.1e}"]
        for name in prepare
    ]
    markdown = f"{images} phantoms at {size} px, {torch.get_num_threads()} torch threads, {repeats} alternating repeats.\n\n" + table(
        ["network", "first call s", "best s / map", "time vs eager (best, median)", "largest difference"], rows
    )
    return Section("Occlusion through graph compilers", markdown)


SWEEP = ((16, 8), (24, 8), (24, 13), (32, 8), (32, 16), (48, 16))  # (patch, stride); each stride tiles 128 px


def sweep(run_dir, images: int = 64) -> Section:
    """Child CP, AP, deletion and time per map of each (patch, stride) on a demo run's shortcut-test children.

    The images are the first ``images`` shortcut-test children (the ones whose Viral
    Pneumonia evidence could sit on the shoulders); every model of the run is scored
    on the same images, with each map explaining the model's predicted class.
    """
    import time

    from exbl_core import run_data, run_models, runs
    from exbl_core.explainers.deletion import deletion_scores
    from exbl_core.faithfulness import predicted
    from exbl_core.metrics import activation_precision_scores, child_confounder_precision

    run = runs.open_run(run_dir)
    split = run_data.load_split(run, "shortcut_test")
    idx = torch.nonzero(split.child)[:images, 0]
    x = split.float_images(idx)
    rows = []
    for name in run_models.models_in(run):
        model = run_models.load_model(run, name)
        preds = predicted(model, x)
        for patch, stride in SWEEP:
            occlusion = explainers.get("occlusion", patch=patch, stride=stride)
            start = time.perf_counter()
            maps = occlusion.maps(model, x, preds)
            seconds = (time.perf_counter() - start) / len(idx)
            cp, n = child_confounder_precision(maps, split.regions[idx], split.child[idx], preds)
            ap = float(activation_precision_scores(maps, split.masks[idx]).mean())
            deletion = float(deletion_scores(model, x, maps, preds).mean())
            rows.append(
                [
                    name,
                    f"{patch} / {stride}",
                    len(window_masks(x.shape[-2:], patch, stride)),
                    f"{seconds:.3f}",
                    "" if cp is None else f"{cp:.3f} (n={n})",
                    f"{ap:.3f}",
                    f"{deletion:.3f}",
                ]
            )
    headers = ["model", "patch / stride", "windows", "s / map", "child CP (children called VP)", "AP", "deletion"]
    markdown = (
        f"{len(idx)} shortcut-test children of `{run_dir}`, each image's mean as infill, "
        f"{torch.get_num_threads()} torch threads.\n\n" + table(headers, rows)
    )
    return Section("Occlusion settings", markdown)


def evaluate_share(run_dir: Path) -> Section:
    """Time ``evaluate`` on a finished run, and the part of it spent scoring the explainers (wall and CPU seconds).

    metrics.json is rewritten by this (as ``python -m exbl_core evaluate`` would), so run
    it on a copy of the run.
    """
    import time

    from exbl_core import faithfulness, pipeline, run_data, runs

    run = runs.open_run(run_dir)
    data = run_data.load_data(run)
    spent = {"wall": 0.0, "cpu": 0.0}
    score = faithfulness.score_explainers

    def timed(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return score(*args, **kwargs)
        finally:
            spent["wall"] += time.perf_counter() - wall
            spent["cpu"] += time.process_time() - cpu

    faithfulness.score_explainers = timed
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = pipeline.evaluate_step(run, data, torch.device("cpu"))
        total = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    finally:
        faithfulness.score_explainers = score
    rows = [
        ["evaluate, all of it", f"{total['wall']:.1f}", f"{total['cpu']:.1f}"],
        ["of which scoring the explainers", f"{spent['wall']:.1f}", f"{spent['cpu']:.1f}"],
    ]
    markdown = (
        f"`{run_dir}`: {len(metrics['models'])} models, explainers scored on {metrics['explainer_sample']} images, "
        f"{torch.get_num_threads()} torch threads.\n\n" + table(["part", "wall s", "CPU s"], rows)
    )
    return Section(
        "Occlusion in evaluate",
        markdown,
        [("scoring the explainers adds <= 60 s to evaluate", f"{spent['wall']:.0f} s", spent["wall"] <= 60)],
    )


BATCHES = (8, 16, 32, 64, 256)


def batches(run_dir=None, size: int = 128, images: int = 4, repeats: int = 5) -> Section:
    """Time per map for each forward batch size, alternating: small batches keep activations in the CPU's cache."""
    model, x, targets = trained_batch(run_dir, size, images)
    ours = explainers.get("occlusion")
    timings = compare({str(b): (lambda b=b: ours.maps(model, x, targets, batch_size=b)) for b in BATCHES}, repeats=repeats)
    rows = [[b, f"{timings.best(str(b)) / images:.3f}", f"{timings.median(str(b)) / images:.3f}"] for b in BATCHES]
    markdown = (
        f"{images} phantoms at {size} px, default window and stride, {torch.get_num_threads()} torch threads, "
        f"{repeats} alternating repeats.\n\n" + table(["images per forward pass", "best s / map", "median s / map"], rows)
    )
    return Section("Occlusion: forward batch size", markdown)


def incremental_bound(run_dir=None, size: int = 128) -> Section:
    """The most that incremental inference (Krypton, SIGMOD 2019) could save: the multiply-adds of every
    convolution output position that an occluding window changes, against the full forward passes.

    Each convolution's output is compared between the image and each occluded copy; a position
    whose channels all stay equal need not be recomputed. Counting only multiply-adds leaves out
    what incremental inference costs (cropping, patching the cached activations), so the ratio is
    an upper bound on the speed-up, not a measurement of one.
    """
    model, x, targets = trained_batch(run_dir, size, 1)

    folded = fold_batchnorm(model)
    convs = [(name, m) for name, m in folded.named_modules() if isinstance(m, torch.nn.Conv2d)]
    outputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out)) for name, m in convs]
    windows = window_masks((size, size), PATCH, STRIDE)
    with torch.no_grad():
        folded(x)
        base = dict(outputs)
        full = {
            name: out[0, :1].numel() * m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            for (name, m), out in zip(convs, base.values(), strict=True)
        }
        changed = dict.fromkeys(full, 0.0)
        fill = infill_values(x, "mean")
        for hidden in windows:
            folded(torch.where(hidden, fill, x))
            for name in full:
                moved = (outputs[name] != base[name]).any(1).float().mean()
                changed[name] += float(moved) * full[name]
    for h in hooks:
        h.remove()
    stages: dict[str, list[float]] = {}
    for name in full:
        key = ".".join(name.split(".")[:2])
        stages.setdefault(key, [0.0, 0.0])
        stages[key][0] += full[name] * len(windows)
        stages[key][1] += changed[name]
    total, needed = sum(v[0] for v in stages.values()), sum(v[1] for v in stages.values())
    rows = [[k, f"{v[0] / 1e9:.2f}", f"{v[1] / v[0]:.2f}"] for k, v in stages.items()]
    markdown = (
        f"One phantom at {size} px, {len(windows)} windows of {PATCH} px at stride {STRIDE}: convolution multiply-adds "
        f"of the {len(windows)} occluded forward passes, and the share of them at output positions the window changes.\n\n"
        + table(["block", "GMAC, all windows", "share changed"], rows)
        + f"\n\nAll convolutions: {total / 1e9:.2f} GMAC, of which {needed / 1e9:.2f} change: at most "
        f"**{total / needed:.2f}x** fewer multiply-adds with exact incremental inference."
    )
    return Section("Occlusion: what incremental inference could save at most", markdown)


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--evaluate", type=Path, metavar="RUN", help="time evaluate on a copy of a finished run (rewrites its metrics.json)")
    p.add_argument("--batches", action="store_true", help="time the forward batch sizes side by side")
    p.add_argument("--sweep", type=Path, metavar="RUN", help="compare window and stride settings on this finished demo run")
    p.add_argument("--incremental", action="store_true", help="the multiply-adds exact incremental inference could save")
    p.add_argument("--compilers", action="store_true", help="the folded network through TorchScript and torch.compile")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep:
        print(sweep(args.sweep, args.images).render())
    elif args.evaluate:
        print(evaluate_share(args.evaluate).render())
    elif args.incremental:
        print(incremental_bound(args.run, args.size).render())
    elif args.compilers:
        print(compilers(args.run, args.size).render())
    elif args.batches:
        print(batches(args.run, args.size, args.images, args.repeats).render())
    else:
        print(run(args.run, args.size, args.images, args.repeats).render())


if __name__ == "__main__":
    main()
