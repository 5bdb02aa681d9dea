"""What the command line prints: a progress bar per epoch, the chosen pair, and the results with their verdicts."""

from __future__ import annotations

import sys

from tqdm import tqdm

from exbl_core import results, runs
from exbl_core.events import Event
from exbl_core.figures import model_label, table1_markdown


class ProgressPrinter:
    """Turns training events into a tqdm bar per epoch and one summary line per epoch."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, event: Event) -> None:
        kind = event["type"]
        if kind == "batch_end":
            if self.bar is None:
                self.bar = tqdm(total=event["batches"], desc=f"{event['phase']} epoch {event['epoch']}", leave=False, file=sys.stderr)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event['loss']:.3f}")
            return
        self._close()
        if kind == "epoch_end":
            # Only a term that can be satisfied sample by sample (the triplet hinge) reports its active share.
            extra = f" expl {event['expl']:.3f}" if "expl" in event else ""
            extra += f" active {event['active_triplets']:.0%}" if "active_triplets" in event else ""
            tqdm.write(
                f"{event['phase']} epoch {event['epoch']:>3}/{event['epochs']}: loss {event['loss']:.3f} (CE {event['ce']:.3f}{extra})"
                f" | val loss {event['val_loss']:.3f} acc {event['val_accuracy']:.3f} AP {event['val_ap']:.3f}"
                f" | {event['seconds']:.1f}s{' *best' if event['best'] else ''}"
            )
        elif kind == "early_stop":
            tqdm.write(f"{event['phase']}: early stop at epoch {event['epoch']}; best epoch {event['best_epoch']} restored")
        elif kind in ("cancelled", "failed"):
            kept = event.get("kept_message") or f"last good checkpoint is from epoch {event['best_epoch']}"
            tqdm.write(f"{event['phase']}: {kind} at epoch {event['epoch']}; {kept}")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def say(msg: str) -> None:
    print(msg, flush=True)


def print_pick(pick: dict) -> None:
    say(f"Exemplars ({pick['rule']}):")
    for side in ("good", "bad"):
        p = pick[side]
        share = pick.get("found", {}).get(f"{side}_lung_share")
        seen = "" if share is None else f"; {share:.2f} of its occlusion map on the lungs"
        say(f"  {side:>4}: training image {p['index']} ({p['class']}, predicted {p['predicted']}), GradCAM AP {p['ap']:.3f}{seen}")


def print_results(run: runs.Run, metrics: dict) -> None:
    say("\nTable 1\n" + table1_markdown(results.table1(run, metrics), results.table1_note(run, metrics)))
    for which, gap in metrics.get("shortcut_gap", {}).items():
        say(
            f"Shortcut gap, {model_label(which)}: test accuracy minus shortcut-test accuracy = {gap['accuracy_gap']:+.3f}; "
            f"Viral Pneumonia recall {gap['vp_recall_confounded']:.2f} -> {gap['vp_recall_shortcut_test']:.2f}"
        )
    for which, verdict in metrics.get("verdicts", {}).items():
        say(f"Verdict, {model_label(which)}: {verdict['label'].upper()}: {verdict['sentence']}")
    say(f"\nWrote {run.file(runs.METRICS)}")
