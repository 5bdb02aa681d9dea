"""End to end: wall time and peak RSS of the demos and of one refinement from the shipped example, side by side.

Each command runs as its own process behind a small wrapper (``common.run_command_measured``),
so the peak resident set is the command's own. Measured in one run, in this order:

- ``demo --quick``: the smoke test, whose checkpoint the other benchmarks reuse;
- ``demo``: the default demo, which starts from the shipped example in ``assets/``;
- ``demo --from-scratch`` and ``demo --seed 7``: the default demo training its models;
- one refinement from the example, as the Refine page runs it: save the pair, refine with one
  method, evaluate, Figure 3 (``--refine-once``), for the page's default method and region-swap.

The demos from scratch take many minutes, which is why ``run_all.py --skip-demo`` leaves
out everything but the quick demo.

    python -m bench.end_to_end [--skip-demo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from bench.common import CACHE, DEFAULT_RUN, Section, run_command_measured, scratch_run, table

DEMOS = {"quick": ["--quick"], "default": [], "scratch": ["--from-scratch"], "seed7": ["--seed", "7"]}
LABELS = {"default": "from the shipped example", "scratch": "trains its models", "seed7": "trains its models (other settings)"}
REFINE_METHODS = ("exbl", "region-swap")  # the Refine page's default for a new run, and the best two-click method


def command(which: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "exbl_core", "demo", *DEMOS[which], "--out", str(out), "--overwrite"]


def refine_command(method: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "bench.end_to_end", "--refine-once", str(out), "--method", method]


def measure(which: str, quick_out: Path = DEFAULT_RUN) -> dict:
    """Run one demo ("quick" writes ``quick_out``, whose checkpoint the other benchmarks reuse); wall s and peak RSS MiB."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = quick_out if which == "quick" else CACHE / f"{which}-run"
    return _measured(command(which, out), f"demo {which} -> {out}", CACHE / f"demo-{which}.log")


def measure_refinement(method: str) -> dict:
    """One refinement from the shipped example in a fresh run, as the Refine page runs it."""
    with scratch_run(f"refine-{method}-") as out:
        return _measured(refine_command(method, out), f"refinement {method} -> {out}", CACHE / f"refine-{method}.log")


def measure_one(name: str) -> dict:
    """A demo by its name in ``DEMOS``, or ``refine-METHOD``."""
    return measure_refinement(name.removeprefix("refine-")) if name.startswith("refine-") else measure(name)


def _measured(cmd: list[str], what: str, log: Path) -> dict:
    print(f"  {what} (log {log})", flush=True)
    r = run_command_measured(cmd, log)
    if r["rc"] != 0:
        raise RuntimeError(f"{what} failed with exit code {r['rc']}; see {log}")
    return r


def refine_once(out: Path, method: str, threads: int | None = None) -> None:
    """The Refine page's job on a fresh copy of the example: the automatic pair, one method, evaluate, Figure 3.

    On the app job's torch threads (every core, ``studio.threads.for_job``) unless ``threads`` is
    given. Prints each step's seconds; ``out`` must not exist yet (``new_example_run`` refuses it).
    """
    from exbl_core import assets, pipeline, run_data, runs
    from exbl_core.training import choose_device
    from studio import threads as app_threads

    torch.set_num_threads(threads or app_threads.for_job())
    marks = [("start", time.perf_counter())]
    run = assets.new_example_run(out)
    device = choose_device()
    with runs.locked(run.path):
        assets.install(run)
        data = run_data.load_data(run)
        marks.append(("example and data", time.perf_counter()))
        pipeline.pick_step(run, data, device)
        marks.append(("pair", time.perf_counter()))
        pipeline.refine_step(run, data, device, overrides={"method": method})
        marks.append((f"refine {method}", time.perf_counter()))
        pipeline.evaluate_step(run, data, device)
        marks.append(("evaluate", time.perf_counter()))
        pipeline.figure_step(run, data, device)
        marks.append(("figure", time.perf_counter()))
    print(", ".join(f"{name} {b - a:.1f} s" for (_, a), (name, b) in zip(marks, marks[1:], strict=False)))


def section(results: dict[str, dict]) -> Section:
    rows = []
    for w, r in results.items():
        if w.startswith("refine-"):
            what = f"one refinement from the example, `{w.removeprefix('refine-')}`: pair, refine, evaluate, Figure 3"
        else:
            what = f"`python -m exbl_core demo{''.join(' ' + a for a in DEMOS[w])}`" + (f" ({LABELS[w]})" if w in LABELS else "")
        rows.append([what, f"{r['wall_s']:.0f}", f"{r['peak_rss_mib']:.0f}"])
    md = [
        f"One run of each, as a separate process, in the order shown (torch {torch.__version__}, {torch.get_num_threads()} threads);",
        "peak RSS is `getrusage(RUSAGE_CHILDREN).ru_maxrss` of a wrapper whose only child is the command.",
        "",
        table(["command", "wall s", "peak RSS MiB"], rows),
    ]
    if set(results) == {"quick"}:
        md += ["", "The default demos and the refinement were skipped (`--skip-demo`)."]
    return Section("4. End to end", "\n".join(md), [], results)


def run(skip_default: bool = False) -> Section:
    results = {w: measure(w) for w in (("quick",) if skip_default else tuple(DEMOS))}
    if not skip_default:
        results |= {f"refine-{m}": measure_refinement(m) for m in REFINE_METHODS}
    return section(results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-demo", action="store_true", help="run only the quick demo")
    p.add_argument("--refine-once", type=Path, metavar="OUT", help="(internal) time one refinement from the example in OUT")
    p.add_argument("--method", default="exbl", help="with --refine-once: the refinement method")
    p.add_argument("--threads", type=int, help="with --refine-once: torch threads (default: every core, as the app's job)")
    p.add_argument("--only", nargs="+", choices=[*DEMOS, *(f"refine-{m}" for m in REFINE_METHODS)], help="measure only these")
    args = p.parse_args()
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.refine_once:
        refine_once(args.refine_once, args.method, args.threads)
    elif args.only:
        print(section({name: measure_one(name) for name in args.only}).render())
    else:
        print(run(args.skip_demo).render())


if __name__ == "__main__":
    main()
