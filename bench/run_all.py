"""Run every benchmark in one process and write bench/RESULTS.md.

    python -m bench.run_all [--skip-demo] [--repeats N] [--quick]

``--quick`` uses few repeats and small scaling sizes: a check that the scripts work,
not numbers to publish.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench import activation_precision, end_to_end, gradcam_inference, occlusion, scaling, train_step
from bench.common import DEFAULT_RUN, ROOT, Section, load_average, machine, table

RESULTS = ROOT / "bench" / "RESULTS.md"
THREADS_NOTE = """Why `--threads 1` on a shared machine: with torch's default of one thread per core, each of the
network's ~150 parallel regions ends in an OpenMP barrier, and when another job holds one of the two cores
the barrier waits for a scheduler time slice. We saw a batch of 4 at 64 px take 1.4 s in one call and
0.03 s in the next. With one thread there is no barrier, and interference only stretches time in
proportion. The demos in section 4 run as separate processes with torch's default threads."""


def peer_versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("grad-cam", "captum", "opencv-python-headless"))


def render(sections: list[Section], argv: list[str], load_before: str, load_after: str, minutes: float) -> str:
    m = machine()
    targets = [t for s in sections for t in s.targets]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {minutes:.0f} minutes with:",
        "",
        "```",
        "make bench" if not argv else f"python -m bench.run_all {shlex.join(argv)}",
        "```",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}, {m['os']}, CPU only. Peers: {peer_versions()}.",
        f"Load average (1 / 5 / 15 min) before: {load_before}; after: {load_after}. "
        "The machine was shared with other jobs while measuring, so absolute times are noisy; "
        "every comparison is a ratio of methods timed side by side in the same repeats.",
        "",
        THREADS_NOTE,
        "",
        "## Targets",
        "",
        table(["target", "measured", "met"], [[t, v, "yes" if ok else "**no**"] for t, v, ok in targets]),
        "",
    ]
    lines += [s.render() for s in sorted(sections, key=lambda s: s.title)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-demo", action="store_true", help="skip the default demo (minutes); the quick demo still runs")
    p.add_argument("--repeats", type=int, default=7, help="alternating repeats for the timing comparisons")
    p.add_argument("--quick", action="store_true", help="few repeats, small scaling sizes, no default demo: a smoke run")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads for the in-process benchmarks (default: torch's). On a shared machine 1 avoids OpenMP barrier stalls",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="where to write the Markdown results")
    argv = sys.argv[1:]
    args = p.parse_args()
    repeats = 2 if args.quick else args.repeats
    started = time.perf_counter()
    load_before = load_average()
    print(f"Load average before: {load_before}", flush=True)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    sections: list[Section] = []
    steps = [
        ("end to end: quick demo (its checkpoint is the trained model below)", lambda: end_to_end.run(skip_default=True)),
        ("GradCAM inference", lambda: gradcam_inference.run(DEFAULT_RUN, repeats=repeats, mem_repeats=1 if args.quick else 2)),
        ("training step", lambda: train_step.run(DEFAULT_RUN, repeats=repeats)),
        ("Activation Precision", lambda: activation_precision.run(repeats=max(repeats, 5))),
        ("occlusion maps", lambda: occlusion.run(DEFAULT_RUN, repeats=repeats)),
        ("scaling", lambda: scaling.run((64, 128) if args.quick else (400, 800, 1600))),
    ]
    for name, step in steps:
        print(f"== {name}", flush=True)
        section = step()
        print(section.render(), flush=True)
        sections.append(section)
        # Written after every step, so that a failure late in a long run keeps what was measured.
        args.out.write_text(render(sections, argv, load_before, load_average(), (time.perf_counter() - started) / 60))
    if not (args.skip_demo or args.quick):
        print("== default demo", flush=True)
        results = {**sections[0].data, "default": end_to_end.measure("default")}
        sections[0] = end_to_end.section(results)
    load_after = load_average()
    text = render(sections, argv, load_before, load_after, (time.perf_counter() - started) / 60)
    args.out.write_text(text)
    print("\n== targets")
    for target, measured, met in (t for s in sections for t in s.targets):
        print(f"{'MET ' if met else 'MISS'} {target}: {measured}")
    print(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
