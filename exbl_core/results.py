"""A run's results as the paper shows them: Table 1's rows and notes, and Figure 3's rows and labels.

Shared by the figure step and the app's Compare page, so both label and select alike.
"""

from __future__ import annotations

import torch

from exbl_core import config, run_data, run_models, runs, weights
from exbl_core.data import CLASSES, VIRAL_PNEUMONIA, Split
from exbl_core.figures import model_label, table1_csv, table1_rows

FIGURE_ROWS_RULE = "Viral Pneumonia test images where the unrefined model looks least at the lungs (lowest AP)"


def default_figure_rows(split: Split, unrefined_ap: torch.Tensor, n: int = 4) -> list[int]:
    """The ``n`` Viral Pneumonia images with the lowest unrefined AP: where the shortcut shows.

    Most Viral Pneumonia CAMs of a model trained from scratch at 128 px are broad and
    central (experiments/shortcut_map.py measures why), so the first few images would not show
    where the shortcut pulls attention. The figure is for looking, not for scoring: the
    rule is printed in its title, and a low-AP selection tends to look better after any
    change (regression to the mean), so Table 1 is what says whether AP went up.
    """
    vp = torch.nonzero(split.labels == VIRAL_PNEUMONIA)[:, 0]
    order = torch.argsort(unrefined_ap[vp], stable=True)
    return vp[order[:n]].tolist()


def figure_row_labels(split: Split, rows: list[int], preds: dict[str, torch.Tensor]) -> list[str]:
    """Figure 3's row labels: the image, its true class, and each model's prediction (``preds`` per model, one per row)."""
    return [
        f"#{i} true {CLASSES[int(split.labels[i])]}\n" + "\n".join(f"{model_label(m)}: {CLASSES[int(p[r])]}" for m, p in preds.items())
        for r, i in enumerate(rows)
    ]


def table1(run: runs.Run, metrics: dict) -> list[dict]:
    """Table 1's rows for this run, with the paper's values beside a real-data run."""
    return table1_rows(metrics, paper=isinstance(run_data.data_config(run), config.FolderSpec))


def table1_csv_text(run: runs.Run, rows: list[dict]) -> str:
    """table1.csv: the rows, and on each what the unrefined model started from (when recorded)."""
    start = run_models.start_weights(run)
    return table1_csv(rows, None if start is None else start.to_dict())


def table1_note(run: runs.Run, metrics: dict | None = None) -> str | None:
    """The lines under Table 1: what the unrefined model started from (when recorded), and which images
    the per-explainer rows ("(sample)") were scored on (when ``metrics`` has them); ``None`` when there is neither."""
    lines = []
    start = run_models.start_weights(run)
    if start is not None:
        lines.append(f"Started from {weights.describe(start)}.")
    sample = (metrics or {}).get("explainer_sample")
    if sample:
        where = " and ".join(f"{n} {split.replace('_', '-')}" for split, n in sample.items())
        lines.append(
            f"Rows marked (sample): each explainer's maps of the predicted class on the same {where} images, chosen once "
            "with the run's seed. Deletion is the drop of that class's probability when the map's top 5% is hidden "
            "(larger: the map found more of what the model uses)."
        )
    return " ".join(lines) or None
