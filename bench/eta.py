"""How true the app's "time left" is: refinements run as the Refine page runs them, ETA against the truth.

``python -m bench.eta --out DIR`` trains one unrefined model (phantom data, the app's thread
count), then runs one job per method exactly as Start refinement does (``studio.tasks.refine_work``:
save the pair, refine, evaluate every model, warm the caches), recording every event with its
arrival time. At each epoch's end it compares the time left that the progress line showed
(``studio.progress.job_progress``) with the time the job really still took, and prints the
relative error per epoch. The events go to ``DIR/events-<method>.json``, so that
``python -m bench.eta --replay DIR`` recomputes the errors with the current rule without training.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from exbl_core import pipeline, run_data
from exbl_core.config import RefineConfig, TrainConfig
from exbl_core.synthetic import SyntheticConfig
from studio import cache, progress, tasks


def errors(record: dict) -> list[tuple[int, float, float, float, float]]:
    """Per epoch end: (epoch, time left shown, true time left, relative error, error of training time alone).

    The last is the rule before the steps after training were counted: the same events
    with the plan's ``after`` left out.
    """
    events, started, finished = record["events"], record["started"], record["finished"]
    training_only = [{k: v for k, v in e.items() if k != "after"} for e in events]
    out = []
    for i, e in enumerate(events):
        if e["type"] == "epoch_end":
            shown = progress.job_progress(events[: i + 1], started, e["t"]).seconds_left
            before = progress.job_progress(training_only[: i + 1], started, e["t"]).seconds_left
            truth = finished - e["t"]
            out.append((e["epoch"], shown, truth, (shown - truth) / truth, (before - truth) / truth))
    return out


def report(records: dict[str, dict]) -> float:
    """Print the error table; returns the largest absolute relative error."""
    worst = 0.0
    print("| job | epoch | time left shown (s) | true (s) | error | error, training time alone |")
    print("|---|---|---|---|---|---|")
    for name, record in records.items():
        for epoch, shown, truth, err, before in errors(record):
            worst = max(worst, abs(err))
            print(f"| {name} | {epoch} | {shown:.1f} | {truth:.1f} | {err:+.1%} | {before:+.1%} |")
        total = record["finished"] - record["started"]
        print(f"| {name} | whole job | {total:.1f} s | load {record.get('load', float('nan')):.1f} at its end | | |")
    print(f"largest error from the first epoch on: {worst:.1%}")
    return worst


def run_job(run, data, method: str, epochs: int, good: int, bad: int) -> dict:
    """One job as Start refinement runs it, with each event's arrival time (as ``JobRunner`` stamps it)."""
    events: list[dict] = []
    started = time.time()
    work = tasks.refine_work(run, data, cache.device(), good, bad, {"method": method, "epochs": epochs, "patience": epochs})
    status = work(lambda e: events.append({**e, "t": time.time()}), threading.Event())
    load = os.getloadavg()[0]  # the machine is shared: the load says how much the timings were disturbed
    return {"method": method, "status": status, "started": started, "finished": time.time(), "events": events, "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="a new folder for the run and the recorded events")
    parser.add_argument("--replay", type=Path, help="a folder written by --out: recompute the errors only")
    parser.add_argument("--methods", nargs="+", default=["exbl", "region-swap", "counterexamples"])
    parser.add_argument("--epochs", type=int, default=4, help="refinement epochs per job")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--n-train", type=int, default=60, help="per class")
    args = parser.parse_args()
    if args.replay:
        report({p.stem: json.loads(p.read_text()) for p in sorted(args.replay.glob("events-*.json"))})
        return
    spec = SyntheticConfig(size=args.size, n_train=args.n_train, n_val=args.n_train // 3, n_test=args.n_train // 2, viral_strength=2.0)
    run = run_data.new_run(args.out / "run", spec, TrainConfig(epochs=3, lr=1e-3), RefineConfig(epochs=args.epochs))
    data = run_data.load_data(run)
    pipeline.train_step(run, data, cache.device())
    pick = pipeline.pick_step(run, data, cache.device())
    good, bad = pick["good"]["index"], pick["bad"]["index"]
    records = {}
    for method in args.methods:
        records[method] = run_job(run, data, method, args.epochs, good, bad)
        (args.out / f"events-{method}.json").write_text(json.dumps(records[method]))
    report(records)


if __name__ == "__main__":
    main()
