"""GradCAM for inference: our analytic and autograd paths against pytorch-grad-cam and Captum.

Five ways to get the batch's CAMs from the same trained model, the same images and
the same target classes, timed side by side: a plain forward pass under ``no_grad``
(the floor: no explanation can cost less), our analytic path under ``no_grad``, our
generic autograd path, pytorch-grad-cam's ``GradCAM`` and Captum's ``LayerGradCam``
(upsampled, ReLU'd and max-normalised the way we do). Peak memory is measured per
method in a fresh process (see ``common.peak_rss_of_call``).

    python -m bench.gradcam_inference --sizes 224 128 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import (
    Section,
    bench_parser,
    compare,
    ensure_trained_run,
    load_trained,
    measure_in_child,
    peak_rss_of_call,
    synthetic_batch,
    table,
)
from exbl_core.explainers.gradcam import EPS, analytic_cams, default_target_layer, gradcam, head_pass, logits_and_cams

METHODS = ("forward", "analytic", "autograd", "pytorch-grad-cam", "captum")
LABELS = {
    "forward": "plain forward pass, `no_grad` (floor)",
    "analytic": "ours, analytic path, `no_grad`",
    "autograd": "ours, generic autograd path",
    "pytorch-grad-cam": "pytorch-grad-cam `GradCAM`",
    "captum": "Captum `LayerGradCam` + upsample",
}


NOTES = """What was compared. Every method explains the same classes (the model's predictions, computed once).
Ours, the autograd path and Captum (`relu_attributions=True`, then `LayerAttribution.interpolate(..., "bilinear")`,
ReLU, division by max + 1e-8) produce the same thing and are compared directly at input size.
pytorch-grad-cam returns min-max scaled maps resized with OpenCV, so it is compared twice: at input size
against min-max(our CAM) (min-max scaling commutes with bilinear resizing, so only the two resizers differ),
and at feature-map resolution, where its own `get_cam_image` on the activations and gradients it captured,
ReLU'd and max-normalised, is set against our map before upsampling. All differences are float32 rounding.

Why pytorch-grad-cam is slow here: it calls `loss.backward()`, which back-propagates through the whole
MobileNetV2 and computes every parameter's gradient, although GradCAM only needs the gradient at the
target layer. Our autograd path and Captum ask `torch.autograd.grad` for that gradient alone, which only
goes back through the GAP + MLP head; the analytic path needs no backward pass at all. The autograd
path and Captum still pay for a forward pass with autograd recording, which keeps every intermediate
activation alive: hence their memory, about that of pytorch-grad-cam."""


def make_methods(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """One zero-argument callable per method, each returning CAMs [B,H,W] for ``targets`` (the floor returns logits)."""
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = default_target_layer(model)
    size = tuple(x.shape[-2:])

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def analytic() -> torch.Tensor:
        with torch.no_grad():
            return logits_and_cams(model, x, targets)[1]

    def autograd() -> torch.Tensor:
        with torch.no_grad():  # gradcam() enables grad inside, without create_graph
            return gradcam(model, x, targets, route="autograd")

    def pgc() -> torch.Tensor:
        # The context manager removes its hooks afterwards; left in place they would
        # also fire (and copy activations) during the other methods' forward passes.
        with GradCAM(model=model, target_layers=[layer]) as cam:
            return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))

    def captum() -> torch.Tensor:
        attr = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
        cam = F.relu(LayerAttribution.interpolate(attr, size, "bilinear")).squeeze(1)
        return (cam / (cam.flatten(1).amax(1).view(-1, 1, 1) + EPS)).detach()

    return {"forward": forward, "analytic": analytic, "autograd": autograd, "pytorch-grad-cam": pgc, "captum": captum}


def minmax(cams: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's per-image scaling: (cam - min) / (max + 1e-7) after subtracting the min."""
    flat = cams.flatten(1)
    shifted = cams - flat.amin(1).view(-1, 1, 1)
    return shifted / (shifted.flatten(1).amax(1).view(-1, 1, 1) + 1e-7)


def agreement(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Maximum absolute differences between our analytic CAMs and every other method's, after equal normalisation.

    * autograd and Captum: same ReLU, bilinear upsampling and division by max + 1e-8,
      compared at input resolution.
    * pytorch-grad-cam min-max scales the low-resolution map, resizes it with OpenCV and
      min-max scales again. Min-max scaling commutes with bilinear resizing, so its
      output equals min-max(our CAM) up to the two resizers: we compare at input size
      after min-max scaling ours, and also at the feature map's resolution (7x7 at 224),
      where its own ``get_cam_image`` on the activations and gradients it captured is
      ReLU'd and max-normalised like ours.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    methods = make_methods(model, x, targets)
    with torch.no_grad():
        ours = methods["analytic"]()
        state = head_pass(model, x)
        ours_low = analytic_cams(model, state, targets, tuple(state.feats.shape[-2:]))
    out = {
        "autograd": float((methods["autograd"]() - ours).abs().max()),
        "captum": float((methods["captum"]() - ours).abs().max()),
        "pytorch-grad-cam": float((methods["pytorch-grad-cam"]() - minmax(ours)).abs().max()),
    }
    layer = default_target_layer(model)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        low = torch.from_numpy(cam.get_cam_image(x, layer, None, acts, grads)).clamp(min=0).float()
    low = low / (low.flatten(1).amax(1).view(-1, 1, 1) + EPS)
    out["pytorch-grad-cam, feature-map resolution"] = float((low - ours_low).abs().max())
    out["empty CAMs"] = int((ours.flatten(1).amax(1) <= 0).sum())
    out["feature map"] = "x".join(str(d) for d in state.feats.shape[-2:])
    return out


def _inputs(run_dir: Path, size: int, batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = load_trained(run_dir)
    x, _, _ = synthetic_batch(size, batch)
    with torch.no_grad():
        targets = model(x).argmax(1)  # the predicted classes, explained by every method
    return model, x, targets


def memory_child(run_dir: Path, size: int, batch: int, method: str) -> None:
    """Entry point of the fresh process that measures one method's peak memory (prints JSON)."""
    model, x, targets = _inputs(run_dir, size, batch)
    fn = make_methods(model, x, targets)[method]
    fn()  # warm-up: one-off allocations (kernel caches, parameter .grad buffers of a backward pass) are not per-call costs
    print(json.dumps({"method": method, "peak_mib": peak_rss_of_call(fn)}))


def peak_memory(run_dir: Path, size: int, batch: int, methods: tuple[str, ...], repeats: int) -> dict[str, float]:
    """Median over ``repeats`` fresh processes of each method's peak RSS growth during one call (MiB)."""
    peaks: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            args = ["bench.gradcam_inference", "--memory-child", m, "--run", str(run_dir), "--sizes", str(size), "--batch", str(batch)]
            peaks[m].append(measure_in_child(args)["peak_mib"])
    return {m: statistics.median(v) for m, v in peaks.items()}


def run(run_dir: Path, sizes: tuple[int, ...] = (224, 128), batch: int = 32, repeats: int = 7, mem_repeats: int = 3) -> Section:
    rows, checks, targets_met, data = [], [], [], {}
    for size in sizes:
        model, x, targets = _inputs(run_dir, size, batch)
        t = compare(make_methods(model, x, targets), repeats)
        agree = agreement(model, x, targets)
        data[size] = {"seconds": t.seconds, "agreement": agree}
        for m in METHODS:
            rows.append([size, LABELS[m], f"{t.best(m):.3f}", f"{t.median(m):.3f}", f"{batch / t.best(m):.1f}"])
            rows[-1] += [t.both(m, "forward", speed=True), t.both(m, "pytorch-grad-cam", speed=True)]
        checks.append(
            [
                size,
                agree["feature map"],
                agree["empty CAMs"],
                f"{agree['autograd']:.1e}",
                f"{agree['captum']:.1e}",
                f"{agree['pytorch-grad-cam']:.1e}",
                f"{agree['pytorch-grad-cam, feature-map resolution']:.1e}",
            ]
        )
        if size == 224:
            vs_fwd, vs_pgc = t.speedup("analytic", "forward"), t.speedup("analytic", "pytorch-grad-cam")
            fwd_text, pgc_text = t.both("analytic", "forward", speed=True), t.both("analytic", "pytorch-grad-cam", speed=True)
            targets_met.append(("analytic GradCAM at 224 >= 0.9x forward throughput", fwd_text, vs_fwd >= 0.9))
            targets_met.append(("analytic GradCAM at 224 >= 1.3x pytorch-grad-cam throughput", pgc_text, vs_pgc >= 1.3))
    md = [
        f"Batch {batch}, trained checkpoint, {repeats} repeats with the order of the five methods alternating.",
        "Throughput ratios (higher is faster) from each method's fastest repeat; in parentheses the median of the per-repeat ratios.",
        "",
        table(
            ["size", "method", "best s / batch", "median s / batch", "images/s (best)", "throughput vs forward", "vs pytorch-grad-cam"],
            rows,
        ),
        "",
        "Agreement with our analytic CAMs (maximum absolute difference over the batch; CAMs lie in [0, 1]):",
        "",
        table(
            [
                "size",
                "feature map",
                "empty CAMs",
                "autograd",
                "Captum",
                "pytorch-grad-cam (input size, min-max)",
                "pytorch-grad-cam (feature map)",
            ],
            checks,
        ),
    ]
    md += ["", NOTES]
    if mem_repeats and 224 in sizes:
        mem = peak_memory(run_dir, 224, batch, METHODS, mem_repeats)
        data["peak_mib_224"] = mem
        share = mem["analytic"] / mem["pytorch-grad-cam"]
        targets_met.append(("analytic peak memory <= 0.5x pytorch-grad-cam's (224, batch 32)", f"{share:.2f}x", share <= 0.5))
        md += [
            "",
            f"Peak memory for one batch of {batch} at 224: growth of the resident set above its resting level during one call,",
            f"in a fresh process per method, after one warm-up call; median of {mem_repeats} processes. The high-water mark",
            "is reset through `/proc/self/clear_refs` just before the call and read from `VmHWM`, so it counts everything",
            "torch, numpy and OpenCV allocate (tracemalloc would see none of it); glibc's mmap threshold is fixed at 64 KiB",
            "(`MALLOC_MMAP_THRESHOLD_`) so freed tensors leave the resident set instead of hiding in malloc's free lists.",
            "",
            table(
                ["method", "peak MiB", "vs pytorch-grad-cam"],
                [[LABELS[m], f"{mem[m]:.0f}", f"{mem[m] / mem['pytorch-grad-cam']:.2f}"] for m in METHODS],
            ),
        ]
    return Section("1. GradCAM for inference", "\n".join(md), targets_met, data)


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--mem-repeats", type=int, default=3)
    p.add_argument("--memory-child", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    run_dir = ensure_trained_run(args.run)
    if args.memory_child:
        memory_child(run_dir, args.sizes[0], args.batch, args.memory_child)
        return
    section = run(run_dir, tuple(args.sizes), args.batch, args.repeats, args.mem_repeats)
    print(section.render())
    for target, measured, met in section.targets:
        print(f"{'MET ' if met else 'MISS'} {target}: {measured}")


if __name__ == "__main__":
    main()
