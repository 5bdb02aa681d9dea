"""Overlays, the paper's Figure 3 grid and Table 1, for the CLI, the app and reports."""

from __future__ import annotations

import csv
import io

import matplotlib

matplotlib.use("Agg")  # no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def colorize(cam: torch.Tensor | np.ndarray, cmap: str = "jet") -> np.ndarray:
    """A CAM in [0, 1] as an RGB float image [H,W,3]."""
    cam = np.asarray(cam, dtype=np.float32)
    return matplotlib.colormaps[cmap](np.clip(cam, 0, 1))[..., :3].astype(np.float32)


def overlay(image: torch.Tensor | np.ndarray, cam: torch.Tensor | np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a grayscale image [H,W] in [0, 1] with its coloured CAM: uint8 RGB [H,W,3]."""
    gray = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    out = (1 - alpha) * rgb + alpha * colorize(cam, cmap)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def mask_outline(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask, for drawing lung outlines."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


EXEMPLAR_COLUMNS = ("Input", "GradCAM (unrefined model)", "Overlay")


def cam_grid(
    images: torch.Tensor,
    cam_sets: list[torch.Tensor],
    titles: tuple[str, ...],
    row_labels: list[str] | None = None,
    alpha: float = 0.45,
    raw: bool = True,
) -> plt.Figure:
    """One row per image: the input, then for each set in ``cam_sets`` its CAM (``raw``) and its overlay.

    ``images`` are [N,1,H,W] or [N,H,W] in [0, 1]; each CAM set is [N,H,W] in [0, 1].
    """
    if images.dim() == 4:
        images = images[:, 0]
    n, cols = len(images), 1 + (2 if raw else 1) * len(cam_sets)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.3 * n + 0.4), squeeze=False)
    for r in range(n):
        img = images[r].numpy()
        panels = [img]
        for cams in cam_sets:
            cam = cams[r].numpy()
            panels += [cam, overlay(img, cam, alpha)] if raw else [overlay(img, cam, alpha)]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if panel.ndim == 2:
                ax.imshow(panel, cmap="gray" if c == 0 else "jet", vmin=0, vmax=1)
            else:
                ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=11)
        if row_labels:  # upright and as large as the titles: rotated 8 pt labels were unreadable at 100% zoom
            axes[r, 0].set_ylabel(row_labels[r], fontsize=11, rotation=0, ha="right", va="center", labelpad=6)
    fig.tight_layout()
    return fig


def model_label(name: str) -> str:
    """How a model is named in figures and tables: the paper's method keeps the paper's name."""
    return {"unrefined": "unrefined", "oracle": "oracle", "exbl": "eXBL"}.get(name, name)


EXPLAINER_LABELS = {"gradcam": "GradCAM", "occlusion": "Occlusion"}


def figure3(
    images: torch.Tensor,
    cam_sets: dict[tuple[str, str], torch.Tensor],
    row_labels: list[str] | None = None,
    alpha: float = 0.45,
    title: str | None = None,
) -> plt.Figure:
    """The paper's Figure 3 with a faithful map beside GradCAM: the input, then one overlay per model and explainer.

    ``cam_sets`` maps ``(model, explainer)`` to display maps [N,H,W] in [0, 1], the
    unrefined model first and each model's explainers side by side, so that a reader
    sees GradCAM and occlusion of the same model on the same rows, before and after.
    ``title`` states how the rows were chosen, so that a reader knows what the figure shows.
    """
    titles = ["Input"]
    for model, explainer in cam_sets:
        # Two lines: a long method name on one line runs into the next column's title.
        titles.append(f"{EXPLAINER_LABELS.get(explainer, explainer)}\n{model_label(model)}")
    fig = cam_grid(images, list(cam_sets.values()), tuple(titles), row_labels, alpha, raw=False)
    if title:
        fig.suptitle(title, fontsize=12)
        fig.tight_layout()
    return fig


def figure_png(fig: plt.Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes and free it (the app and the run writer both need bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


TABLE1_ROWS = (
    ("Accuracy", "val", "accuracy"),
    ("Accuracy", "test", "accuracy"),
    ("Activation Precision", "val", "activation_precision"),
    ("Activation Precision", "test", "activation_precision"),
    ("Accuracy", "shortcut_test", "accuracy"),
    ("Activation Precision", "shortcut_test", "activation_precision"),
    ("Child CP (shoulders)", "shortcut_test", "child_cp"),
    # Each explainer on the same fixed sample of each split (faithfulness.SAMPLE images): deletion is
    # the drop of the predicted class's probability when the map's top 5% is hidden.
    ("Child CP, GradCAM (sample)", "shortcut_test", "by_explainer.gradcam.child_cp"),
    ("Child CP, occlusion (sample)", "shortcut_test", "by_explainer.occlusion.child_cp"),
    ("AP, occlusion (sample)", "test", "by_explainer.occlusion.activation_precision"),
    ("Deletion, GradCAM (sample)", "shortcut_test", "by_explainer.gradcam.deletion"),
    ("Deletion, occlusion (sample)", "shortcut_test", "by_explainer.occlusion.deletion"),
)
# The paper's Table 1, as (unrefined, eXBL): MobileNetV2 from ImageNet weights with
# features[:6] frozen, on the COVID-19 Radiography Database. Shown beside real-data runs
# only, so a user sees how close a run came; the phantom is not the paper's data.
PAPER_TABLE1 = {
    ("Accuracy", "val"): (0.94, 0.89),
    ("Accuracy", "test"): (0.95, 0.90),
    ("Activation Precision", "val"): (0.32, 0.34),
    ("Activation Precision", "test"): (0.32, 0.35),
}
PAPER_NOTE = "The paper's columns are its Table 1 (ImageNet weights, COVID-19 Radiography Database), not measured here."
PAPER_COLUMNS = ("paper_unrefined", "paper_exbl")


def table1_rows(metrics: dict, paper: bool = False) -> list[dict]:
    """Table 1 as rows ``{"metric", "split", "values": {model: value}}``, one value per model of metrics.json.

    Rows a run cannot fill (the shortcut test on real data) are left out. ``paper=True``
    (a real-data run) adds the paper's values as ``row["paper"] = (unrefined, eXBL)``.
    """
    models = metrics.get("models", {})
    rows = []
    for name, split, key in TABLE1_ROWS:
        values = {m: lookup(per_split[split], key) for m, per_split in models.items() if split in per_split}
        if "unrefined" in values and any(v is not None for v in values.values()):
            row = {"metric": name, "split": split, "values": values}
            if paper:
                row["paper"] = PAPER_TABLE1.get((name, split), (None, None))
            rows.append(row)
    return rows


def lookup(entry: dict, key: str) -> float | None:
    """``entry[a][b]...`` for a dotted ``key`` ("by_explainer.occlusion.deletion"); None where a part is missing."""
    for part in key.split("."):
        if not isinstance(entry, dict) or part not in entry:
            return None
        entry = entry[part]
    return entry


def table1_columns(rows: list[dict]) -> list[str]:
    """The models of Table 1 in order: unrefined, oracle, then the refined models."""
    return list(rows[0]["values"]) if rows else []


def table1_csv(rows: list[dict], run_columns: dict | None = None) -> str:
    """Table 1 as CSV text: each model's value, each refined model's change from the unrefined one,
    the paper's values for a real-data run, and ``run_columns`` (what the run started from) on every row."""
    models = table1_columns(rows)
    refined = [m for m in models if m not in ("unrefined", "oracle")]
    paper = _has_paper(rows)
    extra = run_columns or {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["metric", "split", *models, *(f"delta_{m}" for m in refined), *(PAPER_COLUMNS if paper else ()), *extra])
    for r in rows:
        v = r["values"]
        cells = [_fmt(v.get(m)) for m in models] + [_fmt(_delta(v, m)) for m in refined]
        cells += [_fmt(p, 2) for p in r["paper"]] if paper else []
        writer.writerow([r["metric"], r["split"], *cells, *("" if x is None else x for x in extra.values())])
    return buf.getvalue()


def table1_markdown(rows: list[dict], note: str | None = None) -> str:
    """Table 1 as a Markdown table, a refined model's change from the unrefined one in brackets; ``note`` goes underneath."""
    models = table1_columns(rows)
    paper = _has_paper(rows)
    columns = ["metric", "split", *(model_label(m) for m in models)] + (["paper: unrefined", "paper: eXBL"] if paper else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        v = r["values"]
        cells = []
        for m in models:
            d = None if m in ("unrefined", "oracle") else _delta(v, m)
            cells.append(_fmt(v.get(m)) + ("" if d is None else f" ({d:+.3f})"))
        cells += [_fmt(p, 2) for p in r["paper"]] if paper else []
        lines.append(f"| {r['metric']} | {r['split']} | " + " | ".join(cells) + " |")
    if paper:
        lines.append(f"\n{PAPER_NOTE}")
    if note:
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


def _has_paper(rows: list[dict]) -> bool:
    return bool(rows) and "paper" in rows[0]


def _delta(values: dict, model: str) -> float | None:
    a, b = values.get(model), values.get("unrefined")
    return None if a is None or b is None else a - b


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"
