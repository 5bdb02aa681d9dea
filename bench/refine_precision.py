"""Refinement from the shipped example in fp32 and in bf16 autocast: does bf16 keep the outcome, and what does it save?

The accuracy rule for a faster precision: test accuracy and shortcut-test accuracy of bf16
refinements must stay within the spread of fp32 refinements over the same seeds. Each cell
(method, seed, precision) refines a fresh copy of the example with the automatic pair, then
measures both test splits; its result is written to ``bench/.cache/refine-precision/`` as
soon as it is known, so two processes (one per precision, side by side under the same load)
can fill the grid and ``--report`` prints it.

    OMP_NUM_THREADS=1 python -m bench.refine_precision --precision fp32 --seeds 0 1 2 &
    OMP_NUM_THREADS=1 python -m bench.refine_precision --precision bf16 --seeds 0 1 2
    python -m bench.refine_precision --report
    python -m bench.refine_precision --steps 9    # one training step: fp32, bf16, and fp32 on 2 threads, alternating
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import CACHE, scratch_run, table
from exbl_core import assets, config, faithfulness, files, pipeline, run_data, run_models, runs
from exbl_core.explainers.gradcam import analytic_cams, head_pass
from exbl_core.losses import explanation, triplet_terms

OUT = CACHE / "refine-precision"
METHODS = ("exbl", "region-swap")


def cell(method: str, seed: int, precision: str) -> dict:
    """One refinement from the example; its seconds, epochs and both test accuracies (and ``recovered``)."""
    with scratch_run(f"refine-precision-{method}-{seed}-{precision}-") as out:
        return _cell(out, method, seed, precision)


def _cell(out: Path, method: str, seed: int, precision: str) -> dict:
    """``cell`` with its run at ``out``."""
    run = assets.new_example_run(out)
    device = torch.device("cpu")
    with runs.locked(run.path):
        assets.install(run)
        data = run_data.load_data(run)
        pipeline.pick_step(run, data, device)
        started = time.perf_counter()
        result = pipeline.refine_step(run, data, device, overrides={"method": method, "seed": seed, "precision": precision})
        seconds = time.perf_counter() - started
    model = run_models.load_model(run, method, device)
    acc = {
        s: float((faithfulness.predicted(model, data[s].float_images()) == data[s].labels).float().mean())
        for s in ("test", "shortcut_test")
    }
    figures = {role: f["shortcut_test_accuracy"] for role, f in _manifest_figures().items()}
    recovered = (acc["shortcut_test"] - figures["unrefined"]) / (figures["oracle"] - figures["unrefined"])
    epochs = [e for e in result.history if e["type"] == "epoch_end"]
    return {
        "method": method,
        "seed": seed,
        "precision": precision,
        "trained_in": epochs[-1]["precision"],
        "refine_s": seconds,
        "epoch_s": [e["seconds"] for e in epochs],
        "best_epoch": result.best_epoch,
        "test_accuracy": acc["test"],
        "shortcut_test_accuracy": acc["shortcut_test"],
        "recovered": recovered,
    }


def _manifest_figures() -> dict[str, dict]:
    """The example's unrefined and oracle accuracies as measured when it was built (manifest.json)."""
    return assets.read_manifest()["figures"]


def report() -> str:
    cells = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    rows = []
    for method in METHODS:
        for precision in ("fp32", "bf16"):
            mine = sorted((c for c in cells if c["method"] == method and c["trained_in"] == precision), key=lambda c: c["seed"])
            if not mine:
                continue
            for c in mine:
                rows.append(
                    [
                        method,
                        precision,
                        c["seed"],
                        f"{c['test_accuracy']:.4f}",
                        f"{c['shortcut_test_accuracy']:.4f}",
                        f"{c['recovered']:.2f}",
                        f"{c['refine_s']:.0f}",
                        " ".join(f"{s:.0f}" for s in c["epoch_s"]),
                    ]
                )
            for key in ("test_accuracy", "shortcut_test_accuracy"):
                values = [c[key] for c in mine]
                print(f"{method} {precision} {key}: min {min(values):.4f} max {max(values):.4f} mean {statistics.mean(values):.4f}")
    return table(["method", "precision", "seed", "test acc", "shortcut-test acc", "recovered", "refine s", "epoch s"], rows)


def steps(rounds: int) -> str:
    """One CE + eXBL training step of the example's unrefined model (batch 32), alternating fp32 and bf16
    autocast on 1 thread and fp32 on 2 threads: median seconds, and fp32-on-1-thread's median over each."""
    model, _ = assets.load(assets.ASSETS_DIR, "unrefined")
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-7)
    g = torch.Generator().manual_seed(0)
    size = config.DEMO.data.size
    x, y = torch.rand(32, 1, size, size, generator=g), torch.arange(32) % 4
    c_good, c_bad = torch.rand(size * size, generator=g), torch.rand(size * size, generator=g)

    def step(bf16: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            state = head_pass(model, x)
            cams = analytic_cams(model, state, y, x.shape[-2:])
            loss = F.cross_entropy(state.logits, y) + triplet_terms(explanation(x, cams), c_good, c_bad).mean()
        loss.backward()
        opt.step()

    variants = {"fp32, 1 thread": (False, 1), "bf16, 1 thread": (True, 1), "fp32, 2 threads": (False, 2)}
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for name, (bf16, threads) in variants.items():
            torch.set_num_threads(threads)
            started = time.perf_counter()
            step(bf16)
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    rows = [[name, f"{m:.2f}", f"{median['fp32, 1 thread'] / m:.2f}x"] for name, m in median.items()]
    return table(["step", "median s", "speed-up over fp32, 1 thread"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", choices=config.PRECISIONS, default="fp32")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--report", action="store_true", help="print the grid measured so far")
    p.add_argument("--steps", type=int, metavar="ROUNDS", help="time one training step per variant, ROUNDS alternating rounds")
    args = p.parse_args()
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    if args.report or args.steps:
        print(report() if args.report else steps(args.steps))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for method in args.methods:
            result = cell(method, seed, args.precision)
            files.write_json(OUT / f"{method}-{seed}-{result['trained_in']}.json", result)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
