"""How many epochs does a refinement need? Test and shortcut-test accuracy after every epoch.

A refinement of k epochs ends with the model that was best on validation loss by epoch k
of a longer one (the learning rate only drops on a plateau, so the first k epochs are the
same), so one refinement of the full schedule, measured after every epoch, shows what
every shorter schedule would give. Each run folder given (one per phantom seed: a study's
``seed-N`` or a demo's run) is copied without its refinements, paired by the demo's rule
and refined; the accuracies of the best-so-far checkpoint after each epoch go to
``OUT/<name>.json`` as soon as the refinement ends, so seeds can run as separate processes. Nothing
already in OUT is replaced.

    OMP_NUM_THREADS=1 python -m experiments.refine_epochs --out DIR --runs RUN [RUN ...] [--method region-swap]
    python -m experiments.refine_epochs --out DIR --report
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import torch

from exbl_core import checkpoints, faithfulness, files, pipeline, run_data, run_models, runs
from exbl_core.data import CLASSES
from exbl_core.model import build_model

KEPT = (runs.CONFIG, runs.SPLIT, runs.UNREFINED, runs.ORACLE)  # what a refinement starts from


def accuracies(run: runs.Run, name: str, data: dict, partial: bool = False) -> dict[str, float]:
    """Test and shortcut-test accuracy of the run's model ``name`` (with ``partial``: its best epoch so far)."""
    if partial:  # a refinement writes its best epochs to the partial file until it ends
        model = build_model(num_classes=len(CLASSES), freeze=False)
        checkpoints.load_checkpoint(run.file(runs.partial_file(run_models.model_file(name))), model)
        model.eval()
    else:
        model = run_models.load_model(run, name)
    splits = {s: data[s] for s in ("test", "shortcut_test")}
    return {s: float((faithfulness.predicted(model, split.float_images()) == split.labels).float().mean()) for s, split in splits.items()}


def curve(source: Path, out: Path, method: str) -> dict:
    """Refine a copy of ``source`` with ``method`` and measure its best-so-far checkpoint after each epoch."""
    work, result_file = out / f"{source.name}-run", out / f"{source.name}.json"
    for path in (work, result_file):
        if path.exists():  # never replaced: this script deletes and overwrites nothing
            raise SystemExit(f"error: {path} already exists; choose a new --out")
    work.mkdir(parents=True)
    for name in KEPT:
        shutil.copy2(source / name, work / name)
    run = runs.open_run(work)
    data, device = run_data.load_data(run), torch.device("cpu")
    base = {name: accuracies(run, name, data) for name in ("unrefined", "oracle")}
    epochs: list[dict] = []

    def on_event(event: dict) -> None:
        if event.get("type") == "epoch_end" and event.get("phase") == "refine":
            now = accuracies(run, method, data, partial=True)
            epochs.append({"epoch": event["epoch"], "best": event["best"], "val_loss": event["val_loss"], **now})

    with runs.locked(run.path):
        pipeline.pick_step(run, data, device)
        pipeline.refine_step(run, data, device, on_event, overrides={"method": method})
    gap = base["oracle"]["shortcut_test"] - base["unrefined"]["shortcut_test"]
    for e in epochs:
        e["recovered"] = (e["shortcut_test"] - base["unrefined"]["shortcut_test"]) / gap
    result = {"run": str(source), "method": method, "unrefined": base["unrefined"], "oracle": base["oracle"], "epochs": epochs}
    files.write_json(result_file, result)
    return result


def report(out: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    lines = ["| epochs | " + " | ".join(Path(r["run"]).name for r in results) + " | median recovered | min test accuracy |"]
    lines.append("|---" * (len(results) + 3) + "|")
    for k in range(1, max(len(r["epochs"]) for r in results) + 1):
        cells = [next((e for e in r["epochs"] if e["epoch"] == k), None) for r in results]
        shown = [f"{c['recovered']:.2f} ({c['test']:.3f})" if c else "-" for c in cells]
        have = [c for c in cells if c]
        median, lowest = statistics.median(c["recovered"] for c in have), min(c["test"] for c in have)
        lines.append(f"| {k} | " + " | ".join(shown) + f" | {median:.2f} | {lowest:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=Path, nargs="*", default=[])
    parser.add_argument("--method", default="region-swap")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for source in args.runs:
        curve(source, args.out, args.method)
    if args.report or not args.runs:
        print(report(args.out))


if __name__ == "__main__":
    main()
