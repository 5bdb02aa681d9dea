"""Activation Precision on 800 CAMs at 224: one batched top-k against a per-image Python loop.

The CAMs are smooth maps like GradCAM's (random 7x7 maps, ReLU'd, bilinearly upsampled
and max-normalised by ``finish_cam``); the masks are the synthetic phantoms' lung masks.
Running the model over 800 images would only slow the benchmark down: the metric's
cost depends on the shapes, not on which model made the maps.

    python -m bench.activation_precision --n 800 --size 224 --repeats 9
"""

from __future__ import annotations

import argparse
import math
import os

import torch

from bench.common import Section, compare, synthetic_batch, table
from exbl_core.explainers.gradcam import finish_cam
from exbl_core.metrics import activation_precision

TARGET_MS = 50.0
PROFILE = """Profile (torch.profiler, one thread). The plain batched top-k spent about 88 % of its time in
`aten::topk`: a selection (`nth_element`) over all 50,176 pixels of each row, while one pass over the
800 x 50,176 floats (`amax`) takes about 7 ms. The metric now pre-filters: the maxima of 32-pixel runs
(one `amax` pass), the 237 runs with the largest maxima per image (a top-k over 1,568 values), and the top-k
of those 7,584 candidates alone, on int32 keys (non-negative floats order like their bit patterns, and the
integer selection is about 1.4x faster). A row is re-done in full when a discarded run could beat its k-th
value, so the result is exact. What is left: the candidate top-k about 45 %, the run maxima and their top-k
about 30 %, the gathers the rest."""


def smooth_cams(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` GradCAM-like maps [n,size,size] in [0, 1]."""
    low = torch.randn(n, 7, 7, generator=torch.Generator().manual_seed(seed))
    return finish_cam(low, (size, size))


def ap_loop(cams: torch.Tensor, masks: torch.Tensor, tau: float = 5.0) -> float:
    """The straightforward version: one top-k per image, in Python."""
    scores = []
    for cam, mask in zip(cams, masks, strict=True):
        flat = cam.flatten()
        if float(flat.max()) <= 0:
            scores.append(0.0)
            continue
        k = math.ceil(tau / 100 * flat.numel())
        top = flat.topk(k).indices
        scores.append(float(mask.flatten()[top].float().mean()))
    return sum(scores) / len(scores)


def ap_plain_topk(cams: torch.Tensor, masks: torch.Tensor, tau: float = 5.0) -> float:
    """The batched metric without the pre-filter: one unsorted top-k over every pixel of every row."""
    flat, inside = cams.flatten(1), masks.flatten(1)
    k = math.ceil(tau / 100 * flat.shape[1])
    scores = inside.gather(1, flat.topk(k, dim=1, sorted=False).indices).float().mean(1)
    return float(torch.where(flat.amax(1) > 0, scores, torch.zeros_like(scores)).mean())


def run(n: int = 800, size: int = 224, repeats: int = 9) -> Section:
    cams = smooth_cams(n, size)
    _, _, masks = synthetic_batch(size, n)
    batched, loop, old = activation_precision(cams, masks), ap_loop(cams, masks), ap_plain_topk(cams, masks)
    batched_fn = lambda: activation_precision(cams, masks)  # noqa: E731
    # The metric runs with torch's default threads in the CLI and the demo (one per core),
    # while the other sections may run on one thread (``run_all --threads 1``): time it at
    # one thread, at the current setting and at one per core.
    threads_now, cores = torch.get_num_threads(), os.cpu_count() or 1
    per_threads = {}
    for threads in sorted({1, threads_now, cores}):
        torch.set_num_threads(threads)
        per_threads[threads] = compare({"batched": batched_fn, "plain": lambda: ap_plain_topk(cams, masks)}, repeats)
    torch.set_num_threads(threads_now)
    t = per_threads[threads_now]
    # The loop gets its own alternation: the batched call right after it runs about 1.5x slower
    # (measured), which would flatter the loop and misstate the target.
    t_loop = compare({"batched": batched_fn, "loop": lambda: ap_loop(cams, masks)}, max(3, repeats // 3))
    rows = [
        [label, f"{tt.best(k) * 1000:.1f}", f"{tt.median(k) * 1000:.1f}", tt.both(k, "batched"), f"{v:.6f}"]
        for tt, k, label, v in (
            (t, "batched", "batched `metrics.activation_precision`", batched),
            (t, "plain", "batched, plain top-k over all pixels (no pre-filter)", old),
            (t_loop, "loop", "per-image Python loop (own alternation with the batched call)", loop),
        )
    ]
    md = [
        f"{n} CAMs at {size}x{size}, tau = 5 % (top {math.ceil(0.05 * size * size)} pixels per image); {repeats} alternating repeats;",
        "ratios from the fastest repeats (median of per-repeat ratios in parentheses).",
        "",
        table(["implementation", "best ms", "median ms", "time vs batched", "AP"], rows),
        "",
        f"The batched and the loop results agree to {abs(batched - loop):.1e}, and the pre-filtered and the plain top-k to "
        f"{abs(batched - old):.1e}: where pixels tie at the k-th value, which of them count is arbitrary.",
        "",
        PROFILE,
    ]
    md[-1:-1] = [
        "By torch thread count (each its own alternation; the table above is the current setting's):",
        "",
        table(
            ["threads", "batched best ms", "plain top-k best ms", "plain vs batched"],
            [
                [str(k), f"{v.best('batched') * 1000:.1f}", f"{v.best('plain') * 1000:.1f}", v.both("plain", "batched")]
                for k, v in per_threads.items()
            ],
        ),
        "",
    ]
    at_cores = per_threads[cores].best("batched") * 1000
    target = (
        f"batched AP on {n} CAMs at {size} <= {TARGET_MS:.0f} ms (torch's default {cores} threads; 1 thread: "
        f"{per_threads[1].best('batched') * 1000:.1f} ms)",
        f"{at_cores:.1f} ms",
        at_cores <= TARGET_MS,
    )
    return Section(
        "3. Activation Precision",
        "\n".join(md),
        [target],
        {"seconds": t.seconds, "loop_seconds": t_loop.seconds, "by_threads": {k: v.seconds for k, v in per_threads.items()}},
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    section = run(args.n, args.size, args.repeats)
    print(section.render())
    for target, measured, met in section.targets:
        print(f"{'MET ' if met else 'MISS'} {target}: {measured}")


if __name__ == "__main__":
    main()
